import pytest

from kvfleet.common.models.cache_files import publish_dir, staging_dir

pytestmark = pytest.mark.unit


def test_publish_moves_a_staged_directory_into_place(tmp_path):
    final = tmp_path / "cache" / "model"
    tmp = staging_dir(final)
    (tmp / "config.json").write_text("ours")
    publish_dir(tmp, final)
    assert (final / "config.json").read_text() == "ours"
    assert not tmp.exists()


def test_a_lost_race_keeps_the_winners_copy_and_drops_ours(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "config.json").write_text("theirs")
    tmp = staging_dir(final)
    (tmp / "config.json").write_text("ours")
    publish_dir(tmp, final)
    assert (final / "config.json").read_text() == "theirs"
    assert not tmp.exists()


def test_a_real_failure_still_raises(tmp_path):
    final = tmp_path / "model"
    final.write_text("a file, not a directory")
    tmp = staging_dir(final)
    (tmp / "x").write_text("1")
    with pytest.raises(OSError):
        publish_dir(tmp, final)
