import pytest
import torch

from gfnbench.models import ModelNotAvailable, adapters_off, add_lora, load_model


def test_local_directory_round_trip(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, tiny.model(ids).logits)
    assert lm.model_id == str(tmp_path.resolve())


def test_a_local_model_records_a_checksum_that_changes_with_its_weights(tmp_path):
    """The record's model_source: the folder and a sha256 over every file's name, size and own sha256."""
    import hashlib
    import json

    from gfnbench.models import build_tiny

    tiny = build_tiny("llama")

    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    source = load_model(str(tmp_path)).source
    expected = hashlib.sha256()
    for p in sorted(q for q in tmp_path.rglob("*") if q.is_file()):
        expected.update(json.dumps([p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()]).encode())
    assert source == {"path": str(tmp_path.resolve()), "checksum": expected.hexdigest(),
                      "checksum_of": "sha256 of every file"}
    with torch.no_grad():
        next(tiny.model.parameters()).add_(1.0)
    tiny.model.save_pretrained(tmp_path)
    assert load_model(str(tmp_path)).source["checksum"] != source["checksum"]


def test_unknown_model_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="--model embedded"):
        load_model("no-such-org/no-such-model-xyz")


def test_lora_starts_as_the_base_and_adapters_off_is_the_base():
    from gfnbench.models import build_tiny

    lm = build_tiny("gpt2")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base = lm.model(ids).logits.clone()
    peft_model = add_lora(lm.model, rank=4, alpha=8)
    for name, p in peft_model.named_parameters():       # make the adapter non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    with torch.no_grad():
        assert not torch.allclose(peft_model(ids).logits, base)
        with adapters_off(peft_model) as ref:
            torch.testing.assert_close(ref(ids).logits, base)


def test_a_second_converter_keeps_the_first_ones_complete_folder_and_a_failed_one_still_raises(tmp_path):
    """Two bench jobs converting the embedded GGUF at once: the rename of the loser meets a non-empty folder."""
    from gfnbench.models import publish_folder

    target = tmp_path / "model"
    first, second = tmp_path / ".tmp-a", tmp_path / ".tmp-b"
    for folder, tag in ((first, "a"), (second, "b")):
        folder.mkdir()
        (folder / "config.json").write_text(tag)
    publish_folder(first, target)
    publish_folder(second, target)
    assert (target / "config.json").read_text() == "a"
    broken, third = tmp_path / "broken", tmp_path / ".tmp-c"
    (broken / "partial").mkdir(parents=True)
    (broken / "partial" / "x").write_text("")
    third.mkdir()
    (third / "config.json").write_text("c")
    with pytest.raises(OSError):
        publish_folder(third, broken)
