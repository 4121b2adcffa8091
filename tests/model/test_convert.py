"""`ppp convert` both ways, through the CLI's main() in-process."""

import numpy as np

from ppp_jax.cli import main
from ppp_jax.model.safetensors_io import CheckpointFiles, read_tensor
from ppp_jax.model.testing import write_tiny_hf_checkpoint


def _tensors(directory):
    files = CheckpointFiles(directory)
    return {name: read_tensor(files[name]) for name in files.names()}


def test_hf_to_orbax_to_hf(tmp_path, capsys):
    src = write_tiny_hf_checkpoint(tmp_path / "hf", seed=11, num_kv_heads=2, attention_out_bias=True)
    assert main(["convert", "hf2orbax", str(src), str(tmp_path / "orbax")]) == 0
    assert (tmp_path / "orbax" / "model_config.json").exists()
    assert main(["convert", "orbax2hf", str(tmp_path / "orbax"), str(tmp_path / "back"),
                 "--max-shard-size", "30KB"]) == 0
    captured = capsys.readouterr()
    assert "hf2orbax: wrote" in captured.out and "orbax2hf: wrote" in captured.out
    assert "tensor" in captured.err  # the tqdm progress bars
    a, b = _tensors(src), _tensors(tmp_path / "back")
    assert sorted(a) == sorted(b) and (tmp_path / "back" / "model.safetensors.index.json").exists()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k

    # --dtype bfloat16 rounds each tensor the way ml_dtypes / torch do
    assert main(["convert", "orbax2hf", str(tmp_path / "orbax"), str(tmp_path / "bf16"),
                 "--dtype", "bfloat16", "--quiet"]) == 0
    c = _tensors(tmp_path / "bf16")
    for k in a:
        assert c[k].dtype.name == "bfloat16"
        np.testing.assert_array_equal(c[k], a[k].astype(c[k].dtype), err_msg=k)


def test_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["convert", "hf2orbax", str(tmp_path / "nope"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    src = write_tiny_hf_checkpoint(tmp_path / "hf", seed=12)
    (tmp_path / "taken").mkdir()
    assert main(["convert", "hf2orbax", str(src), str(tmp_path / "taken"), "--quiet"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["convert", "hf2orbax", str(src), str(tmp_path / "taken"), "--quiet", "--overwrite"]) == 0
