"""`python -m gfnbench_perf` (`make perf`)."""
from gfnbench_perf.run import main

if __name__ == "__main__":
    main()
