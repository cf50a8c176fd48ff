"""`pas pool embed`: the clip-retrieval layout pool_index reads, ClipEncoder's vectors, resumable parts, bad input."""
import numpy as np
import pytest

from conftest import make_image
from pas.cli import main
from pas.models.clip import ClipEncoder
from pas.sources.embedding_pool import iter_blocks, iter_files, open_pool
from pas.sources.pool_embed import embed_pool_folder, part_paths


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(7):
        make_image(i, 40).save(root / ("sub" if i % 2 else "") / f"img{i}.png")
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def test_the_layout_is_read_back_by_the_pool_reader_with_clip_encoders_vectors(folder, tmp_path, tiny_models):
    out = tmp_path / "pool"
    assert main(["pool", "embed", str(folder), str(out), "--clip", str(tiny_models["clip"]), "--part-size", "3"]) == 0
    pool = open_pool(out)
    assert pool.model == "tiny://clip" and len(pool.parts) == 3 and pool.rows == 7   # broken.jpg skipped
    assert np.load(part_paths(out, 0)[0]).dtype == np.float16
    files = __import__("pyarrow").concat_tables(list(iter_files(pool)))
    assert {"url", "caption", "key", "image_path"} <= set(files.column_names)
    paths = files.column("image_path").to_pylist()
    got = np.concatenate(list(iter_blocks(pool)))
    from PIL import Image
    want = ClipEncoder(tiny_models["clip"]).encode_images([Image.open(p) for p in paths])
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.allclose(np.linalg.norm(np.load(part_paths(out, 1)[0]).astype(np.float32), axis=1), 1, atol=2e-3)


def test_a_run_stopped_after_one_part_resumes_to_identical_files(folder, tmp_path, tiny_models):
    clip = tiny_models["clip"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    embed_pool_folder(folder, whole, clip, part_size=3)
    first = embed_pool_folder(folder, resumed, clip, part_size=3, max_parts=1)
    assert first["embedded"] == 1 and not first["complete"] and not part_paths(resumed, 1)[1].exists()
    second = embed_pool_folder(folder, resumed, clip, part_size=3)
    assert (second["kept"], second["embedded"]) == (1, 2)
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(resumed) for p in resumed.rglob("*") if p.is_file())
    for name in files:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    assert embed_pool_folder(folder, resumed, clip, part_size=3)["embedded"] == 0


def test_img2dataset_output_keeps_url_caption_and_key(tmp_path, tiny_models):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pas.core.shards import encode_jpeg

    shards = tmp_path / "i2d"
    shards.mkdir()
    import io
    import tarfile
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for i in range(3):
            data = encode_jpeg(make_image(i))
            info = tarfile.TarInfo(f"00000000{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"key": [f"00000000{i}" for i in range(4)], "url": [f"http://x/{i}" for i in range(4)],
                             "caption": [f"c{i}" for i in range(4)],
                             "status": ["success", "success", "success", "failed_to_download"]}),
                   shards / "00000.parquet")
    out = tmp_path / "pool"
    embed_pool_folder(shards, out, tiny_models["clip"])
    table = pq.read_table(part_paths(out, 0)[1])
    assert table.column("url").to_pylist() == ["http://x/0", "http://x/1", "http://x/2"]
    assert table.column("caption").to_pylist() == ["c0", "c1", "c2"] and "image_path" not in table.column_names
    assert open_pool(out).rows == 3


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, tiny_models, capsys):
    source = tmp_path / "nothing"
    if case == "empty":
        source.mkdir()
        (source / "notes.md").write_text("no images here")
    code = main(["pool", "embed", str(source), str(tmp_path / "out"), "--clip", str(tiny_models["clip"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert ("not found" if case == "missing" else "holds no images") in err
