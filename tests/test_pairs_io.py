import pytest

from mirror_sfm.errors import MirrorError
from mirror_sfm.pairs_io import read_pairs, unique_pairs, write_pairs


def test_round_trip_keeps_order(tmp_path):
    pairs = [("b.jpg", "a.jpg"), ("a.jpg", "c.jpg"), ("sub/d.png", "a.jpg")]
    write_pairs(tmp_path / "pairs.txt", pairs)
    assert (tmp_path / "pairs.txt").read_text() == "b.jpg a.jpg\na.jpg c.jpg\nsub/d.png a.jpg\n"
    assert read_pairs(tmp_path / "pairs.txt") == pairs


def test_scores_file_is_readable_as_pairs(tmp_path):
    write_pairs(tmp_path / "s.txt", [("a", "b")], scores=[0.5])
    assert (tmp_path / "s.txt").read_text() == "a b 0.500000\n"
    assert read_pairs(tmp_path / "s.txt") == [("a", "b")]


def test_reader_skips_comments_and_blank_lines(tmp_path):
    (tmp_path / "p.txt").write_text("# header\n\na b\n  c d  \n")
    assert read_pairs(tmp_path / "p.txt") == [("a", "b"), ("c", "d")]


def test_unique_pairs():
    pairs = [("a", "b"), ("b", "a"), ("a", "a"), ("a", "b"), ("c", "a")]
    assert unique_pairs(pairs) == [("a", "b"), ("c", "a")]
    assert unique_pairs(pairs, symmetric=False) == [("a", "b"), ("b", "a"), ("c", "a")]


def test_name_with_space_is_refused_and_old_file_kept(tmp_path):
    out = tmp_path / "pairs.txt"
    out.write_text("old content\n")
    with pytest.raises(MirrorError, match="my photo.jpg"):
        write_pairs(out, [("a.jpg", "my photo.jpg")])
    assert out.read_text() == "old content\n"
    assert list(tmp_path.iterdir()) == [out]


def test_missing_pair_file(tmp_path):
    with pytest.raises(MirrorError, match="nope.txt"):
        read_pairs(tmp_path / "nope.txt")
