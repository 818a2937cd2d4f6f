"""Hostile weights files: headers, configs and metadata of the wrong size, depth or type, written by the test
as an attacker would, each read by load_pretrained (what evaluate, predict, finetune and export call). Every
one must be one CheckpointError line that names the file and what is wrong: no traceback, no hang, and no
table or array built from a size the file merely declares."""
import io
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import minivit as mv
from minivit.io.checkpoint import CheckpointError, save_checkpoint
from minivit.io.huggingface import save_hf
from minivit.io.safetensors_file import save_timm

CFG = mv.ViTConfig.preset("test")
CLASSES = [f"c{i}" for i in range(CFG.num_classes)]


def _timm(tmp_path):
    return save_timm(tmp_path / "m.safetensors", mv.init_params(CFG, seed=0), CFG, CLASSES, [0.5] * 3, [0.25] * 3)


def _split(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header_bytes, data):
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    return path


def _header(change):
    """A timm file whose header `change(header)` rewrote (it may return a replacement)."""
    def build(tmp_path):
        path = _timm(tmp_path)
        header, data = _split(path)
        header = change(header) or header
        return _write(path, json.dumps(header).encode(), data)
    return build


def _raw(change):
    """A timm file whose bytes `change(raw)` rewrote."""
    def build(tmp_path):
        path = _timm(tmp_path)
        path.write_bytes(change(path.read_bytes()))
        return path
    return build


def _header_text(text):
    def build(tmp_path):
        _, data = _split(_timm(tmp_path))
        return _write(tmp_path / "m.safetensors", text.encode(), data)
    return build


def _meta(**changes):
    """A timm file with its __metadata__ entries changed (None removes one)."""
    def change(header):
        meta = header["__metadata__"]
        for k, v in changes.items():
            if v is None:
                meta.pop(k)
            else:
                meta[k] = v
    return _header(change)


def _minivit_config(**fields):
    def change(header):
        config = json.loads(header["__metadata__"]["minivit_config"])
        header["__metadata__"]["minivit_config"] = json.dumps({**config, **fields})
    return _header(change)


def _bf16_offsets(header):
    """The first tensor turned into bfloat16 whose offsets are not numbers."""
    k = next(k for k in header if k != "__metadata__")
    header[k]["dtype"], header[k]["data_offsets"] = "BF16", ["0", "x"]


def _bf16_short(header):
    """A bfloat16 tensor whose offsets span fewer bytes than its shape needs (a reshape would fail)."""
    k = next(k for k in header if k != "__metadata__" and len(header[k]["shape"]) == 2)
    a, b = header[k]["data_offsets"]
    header[k]["dtype"], header[k]["shape"] = "BF16", [header[k]["shape"][0] * 4, header[k]["shape"][1]]


def _first_entry(value):
    def change(header):
        header[next(k for k in header if k != "__metadata__")] = value
    return _header(change)


def _entry_field(field, value):
    def change(header):
        header[next(k for k in header if k != "__metadata__")][field] = value
    return _header(change)


SAFETENSORS = {
    "length 2^63": (_raw(lambda raw: struct.pack("<Q", 2 ** 63) + raw[8:]), "header length"),
    "length 2^64-1": (_raw(lambda raw: struct.pack("<Q", 2 ** 64 - 1) + raw[8:]), "header length"),
    "seven bytes": (_raw(lambda raw: raw[:7]), "too short"),
    "nested 100,000 deep": (_header_text("[" * 100_000 + "]" * 100_000), "nested too deep"),
    "header a list": (_header_text("[]"), "JSON object"),
    "header null": (_header_text("null"), "JSON object"),
    "header a string": (_header_text('"weights"'), "JSON object"),
    "header not JSON": (_header_text("{nope"), "not JSON"),
    "entry a string": (_first_entry("x"), "must be an object"),
    "dtype a number": (_entry_field("dtype", 5), "dtype must be a name"),
    "dtype I64": (_entry_field("dtype", "I64"), "floating point"),
    "shape a string": (_entry_field("shape", "3"), "shape must be"),
    "negative shape": (_entry_field("shape", [-1]), "shape must be"),
    "offsets a dict": (_entry_field("data_offsets", {"a": 1}), "data_offsets"),
    "offsets past the end": (_entry_field("data_offsets", [0, 10 ** 12]), "data_offsets"),
    "bf16 offsets not numbers": (_header(_bf16_offsets), "data_offsets"),
    "bf16 shape unlike its bytes": (_header(_bf16_short), "offsets span"),
    "metadata a list": (_header(lambda h: h.update({"__metadata__": ["x"]})), "__metadata__"),
    "dropout 'x'": (_minivit_config(dropout="x"), "dropout must be a number"),
    "stem_channels 5": (_minivit_config(stem_channels=5), "stem_channels must be a list"),
    "config a list": (_meta(minivit_config="[1, 2]"), "not a model config"),
    "config not JSON": (_meta(minivit_config="{"), "not a model config"),
    "10^9 layers": (_minivit_config(depth=10 ** 9), "1,000,000,000 blocks"),
    "classes '5'": (_meta(classes='"5"'), "class names"),
    "classes not JSON": (_meta(classes="[c0"), "'classes' is not JSON"),
    "mean without std": (_meta(std=None), "mean without the other"),
    "mean of strings": (_meta(mean='["1", "2", "3"]'), "lists of numbers"),
}


def _hf_folder(tmp_path):
    """A transformers folder as transformers writes it: its model.safetensors holds no minivit metadata, so the
    class names and normalisation come from config.json and preprocessor_config.json."""
    folder = save_hf(tmp_path / "hf", mv.init_params(CFG, seed=0), CFG, CLASSES, [0.5] * 3, [0.25] * 3)
    header, data = _split(folder / "model.safetensors")
    header["__metadata__"] = {"format": "pt"}
    _write(folder / "model.safetensors", json.dumps(header).encode(), data)
    return folder


def _hf_config(change):
    def build(tmp_path):
        folder = _hf_folder(tmp_path)
        config = json.loads((folder / "config.json").read_text())
        config = change(config) or config
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        return folder
    return build


def _hf_pre(change):
    def build(tmp_path):
        folder = _hf_folder(tmp_path)
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        (folder / "preprocessor_config.json").write_text(json.dumps(change(pre) or pre))
        return folder
    return build


HF = {
    "config a list": (_hf_config(lambda c: [c]), "JSON object"),
    "config nested 100,000 deep": (_hf_config(lambda c: "[" * 100_000 + "]" * 100_000), "nested too deep"),
    "config not JSON": (_hf_config(lambda c: "{"), "not JSON"),
    "layer_norm_eps 'x'": (_hf_config(lambda c: c.update(layer_norm_eps="x")), "ln_eps must be a number"),
    "hidden_act a list": (_hf_config(lambda c: c.update(hidden_act=["gelu"])), "hidden_act"),
    "hidden_size 'x'": (_hf_config(lambda c: c.update(hidden_size="x")), "dim must be a positive integer"),
    "id2label a list": (_hf_config(lambda c: c.update(id2label=["a"])), "id2label must map"),
    "10^9 layers": (_hf_config(lambda c: c.update(num_hidden_layers=10 ** 9)), "1,000,000,000 blocks"),
    "preprocessor without image_std": (_hf_pre(lambda p: p.pop("image_std") and None), "mean without the other"),
    "preprocessor a list": (_hf_pre(lambda p: [p]), "JSON object"),
}


def _official(change):
    def build(tmp_path):
        path = mv.save_jax_npz(tmp_path / "vit.npz", mv.init_params(CFG, seed=0), CFG)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        change(arrays)
        np.savez(path, **arrays)
        return path
    return build


OFFICIAL = {
    "a kernel missing": (_official(lambda a: a.pop("Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel")),
                         "missing Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel"),
    "the first query kernel missing": (_official(lambda a: a.pop(
        "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel")), "not a ViT checkpoint"),
    "a 2-D patch kernel": (_official(lambda a: a.update({"embedding/kernel": np.zeros((4, 4), "f4")})), "4 axes"),
    "a kernel of the wrong shape": (_official(lambda a: a.update({"head/bias": np.zeros(3, "f4")})), "head/bias"),
}


def _checkpoint(change_meta):
    def build(tmp_path):
        path = save_checkpoint(tmp_path / "ck.npz", mv.init_params(CFG, seed=0), CFG, meta={"classes": CLASSES})
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["meta"]))
        meta = change_meta(meta) or meta
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(path, **arrays)
        return path
    return build


CHECKPOINT = {
    "meta a list": (_checkpoint(lambda m: [m]), "must be a JSON object"),
    "no config": (_checkpoint(lambda m: m.pop("config") and None), "no model 'config'"),
    "config of the wrong types": (_checkpoint(lambda m: m["config"].update(dim="x")), "dim must be a positive integer"),
    "config a string": (_checkpoint(lambda m: m.update(config="vit")), "mapping"),
    "10^9 layers": (_checkpoint(lambda m: m["config"].update(depth=10 ** 9)), "1,000,000,000 blocks"),
    "classes a number": (_checkpoint(lambda m: m.update(classes=5)), "'classes' must be a list"),
}

CASES = {**{f"safetensors: {k}": v for k, v in SAFETENSORS.items()}, **{f"hf: {k}": v for k, v in HF.items()},
         **{f"official npz: {k}": v for k, v in OFFICIAL.items()}, **{f"checkpoint: {k}": v for k, v in CHECKPOINT.items()}}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_file_is_one_line_naming_it(tmp_path, case):
    build, message = CASES[case]
    path = build(tmp_path)
    with pytest.raises(CheckpointError) as e:
        mv.load_pretrained(path, log=lambda m: None)
    text = str(e.value)
    assert str(path) in text and message in text and "\n" not in text, text


@pytest.mark.parametrize("case", ["safetensors: nested 100,000 deep", "hf: layer_norm_eps 'x'",
                                  "official npz: a kernel missing", "checkpoint: 10^9 layers"])
def test_the_commands_print_the_line_without_a_traceback(tmp_path, case):
    path = CASES[case][0](tmp_path)
    for command in (["evaluate", str(path)], ["export", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]):
        r = subprocess.run([sys.executable, "-m", "minivit", *command], capture_output=True, text=True, timeout=120)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 1 and "Traceback" not in r.stderr and str(path) in last, r.stderr
        assert last.startswith("minivit: error:"), r.stderr


def _zip_bomb(path, name, shape):
    """An .npz member whose header declares `shape` of float32, deflated, with only its first MB of zeros: the
    header is all a check made before reading sees, and NumPy's reader would allocate the whole declared array
    before it found the data short (writing gigabytes of zeros through zlib would only make the test slow)."""
    from numpy.lib import format as npy
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        with z.open(name + ".npy", "w", force_zip64=True) as f:
            f.write(header.getvalue() + bytes(2 ** 20))


@pytest.mark.parametrize("kind", ["official", "checkpoint"])
def test_an_npz_declaring_gigabytes_is_refused_before_it_is_decompressed(tmp_path, kind):
    """A small file declaring a 4 GiB array (an unknown key of the official layout; a parameter of a checkpoint
    whose shape is not the model's): refused by name from the member's header alone, in a process that could
    not even allocate 4 GiB (where reading it first would end in a MemoryError)."""
    if kind == "official":
        path = mv.save_jax_npz(tmp_path / "bomb.npz", mv.init_params(CFG, seed=0), CFG)
        _zip_bomb(path, "Transformer/encoderblock_0/extra", (2 ** 30,))
        message = "keys minivit cannot represent: Transformer/encoderblock_0/extra"
    else:
        params = mv.init_params(CFG, seed=0)
        path = save_checkpoint(tmp_path / "bomb.npz", {k: v for k, v in params.items() if k != "head.w"}, CFG)
        _zip_bomb(path, "param/head.w", (2 ** 20, 2 ** 10))
        message = "'head.w' missing or of the wrong shape"
    assert path.stat().st_size < 16 * 2 ** 20
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 * 2 ** 30, 3 * 2 ** 30)); "
    r = subprocess.run([sys.executable, "-c", limit + "from minivit.cli.commands import main; import sys; "
                        f"sys.exit(main(['evaluate', {str(path)!r}]))"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})   # (many BLAS threads reserve memory too)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
