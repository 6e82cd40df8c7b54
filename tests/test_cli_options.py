"""The command-line option mechanism: flags from the option dataclasses, --config as argparse defaults (flags win),
-v/-q anywhere, --version, help with description/example/defaults, -o/--output, and the gtgen extra check."""

import argparse
import logging
import sys

import pytest

import mirror_sfm
from gtgen import cli as gtgen_cli
from mirror_sfm import cli
from mirror_sfm.cli_options import HelpFormatter, field_docs
from mirror_sfm.distributed import RayOptions
from mirror_sfm.extract import ExtractionOptions
from mirror_sfm.pairs import PairsOptions
from mirror_sfm.retrieval import RetrievalOptions
from mirror_sfm.verify import VerifyOptions


@pytest.fixture
def fake_pairs(monkeypatch):
    """Replace the library call of `mirror_sfm pairs`: record its arguments and the logger level it ran with."""
    calls = []

    def generate_pairs(image_dir, output, **kwargs):
        calls.append(dict(kwargs, level=logging.getLogger("mirror_sfm").getEffectiveLevel()))
        logging.getLogger("mirror_sfm.pairs").info("an INFO line")
        return []

    monkeypatch.setattr("mirror_sfm.pairs.generate_pairs", generate_pairs)
    return calls


def run_pairs(tmp_path, *flags):
    return cli.main(["pairs", str(tmp_path), "-o", str(tmp_path / "p.txt"), *flags])


@pytest.mark.parametrize(
    "flags, k",
    [
        ((), 3),
        (("-k5",), 5),
        (("-k", "5"), 5),
        (("--num-match", "5"), 5),
        (("--num-matched=5",), 5),
        (("-k5", "--num-matched", "6"), 6),
    ],
)
def test_config_gives_defaults_and_any_spelling_of_a_flag_wins(tmp_path, fake_pairs, flags, k):
    conf = tmp_path / "c.yaml"
    conf.write_text("num-matched: 3\nverify: none\nsymmetric: true\nprmac_shortlist: 7\nresize: '256'\n")
    assert run_pairs(tmp_path, "--config", str(conf), *flags) == 0
    options: PairsOptions = fake_pairs[-1]["options"]
    assert options.retrieval.num_matched == k
    assert options.verify.method == "none" and options.symmetric is True
    assert options.retrieval.shortlist == 7 and options.extraction.resize == 256  # '_' keys; strings converted
    assert run_pairs(tmp_path, "--verify", "sift", "--config", str(conf)) == 0  # before or after --config
    assert fake_pairs[-1]["options"].verify.method == "sift"


def test_without_config_the_dataclass_defaults_apply(tmp_path, fake_pairs):
    assert run_pairs(tmp_path) == 0
    options = fake_pairs[-1]["options"]
    assert options == PairsOptions()
    assert fake_pairs[-1]["features"] is None and fake_pairs[-1]["database"] is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nonsense: 1\n", "unknown option 'nonsense'"),
        ("pooling: max\n", "'pooling' must be one of model, mac, gem, rmac"),
        ("resize: big\n", "bad value for 'resize'"),
        ("- 1\n", "expected 'option: value' lines"),
        ("config: x.yaml\n", "unknown option 'config'"),
    ],
)
def test_bad_config_is_one_line_naming_the_file(tmp_path, fake_pairs, capsys, text, expected):
    conf = tmp_path / "bad.yaml"
    conf.write_text(text)
    assert run_pairs(tmp_path, "--config", str(conf)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(conf) in err[0] and expected in err[0]
    assert not fake_pairs
    assert run_pairs(tmp_path, "--config", str(tmp_path / "missing.yaml")) == 2
    assert "config file not found" in capsys.readouterr().err


def test_shipped_pairs_config_holds_the_defaults(tmp_path, fake_pairs):
    from pathlib import Path

    conf = Path(__file__).parents[1] / "configs" / "pairs.yaml"
    assert run_pairs(tmp_path, "--config", str(conf)) == 0
    assert fake_pairs[-1]["options"] == PairsOptions()


def test_ray_flags_reach_the_library(tmp_path, fake_pairs):
    assert run_pairs(tmp_path) == 0
    assert fake_pairs[-1]["ray"] is None  # no --ray: the single process
    assert run_pairs(tmp_path, "--ray", "ray://head:10001", "--ray-workers", "3", "--ray-gpus-per-worker", "0.5") == 0
    assert fake_pairs[-1]["ray"] == RayOptions(address="ray://head:10001", workers=3, gpus_per_worker=0.5)


def test_index_flags_reach_retrieval_options(tmp_path, fake_pairs):
    flags = ["--exact-max", "5000", "--index", "IVF{nlist},SQ8", "--index-nlist", "64", "--index-nprobe", "8"]
    flags += ["--index-refine", "0", "--index-train-per-list", "30", "--faiss-gpu", "no"]
    assert run_pairs(tmp_path, *flags) == 0
    expected = dict(exact_max=5000, index="IVF{nlist},SQ8", ivf_nlist=64, ivf_nprobe=8, refine=0, train_per_list=30)
    assert fake_pairs[-1]["options"].retrieval == RetrievalOptions(**expected, use_gpu="no")
    conf = tmp_path / "c.yaml"
    conf.write_text("index: 'PCAR64,IVF{nlist},PQ16'\nindex-nprobe: 4\n")
    assert run_pairs(tmp_path, "--config", str(conf), "--index-nprobe", "2") == 0
    retrieval = fake_pairs[-1]["options"].retrieval
    assert (retrieval.index, retrieval.ivf_nprobe) == ("PCAR64,IVF{nlist},PQ16", 2)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (("--index-nprobe", "0"), "--index-nprobe must be >= 1, got 0"),
        (("--index-nlist", "-1"), "--index-nlist must be >= 0, got -1"),
        (("--index-refine", "-5"), "--index-refine must be >= 0, got -5"),
        (("--index-train-per-list", "0"), "--index-train-per-list must be >= 1, got 0"),
        (("--exact-max", "-1"), "--exact-max must be >= 0, got -1"),
        (("--index", "IVF{n},Flat"), "--index must be a faiss index_factory string"),
        (("--index", " "), "--index must be a faiss index_factory string"),
    ],
)
def test_bad_index_flag_is_one_line_before_any_work(tmp_path, capsys, flags, expected):
    images = tmp_path / "images"
    images.mkdir()  # empty: the option check comes first, before the folder is read
    assert cli.main(["pairs", str(images), "-o", str(tmp_path / "p.txt"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_reconstruct_config_and_output_spellings(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(
        "mirror_sfm.colmap.reconstruct", lambda images, out, options, verbose=False: seen.append((out, options)) or {}
    )
    conf = tmp_path / "c.yaml"
    conf.write_text("num-matched: 4\nmax-image-size: 800\nverify: none\n")
    assert cli.main(["reconstruct", str(tmp_path), str(tmp_path / "a"), "--config", str(conf)]) == 0
    assert cli.main(["reconstruct", str(tmp_path), "-o", str(tmp_path / "b"), "--config", str(conf), "-k9"]) == 0
    (out_a, opt_a), (out_b, opt_b) = seen
    assert (out_a.name, opt_a.num_matched, opt_a.max_image_size) == ("a", 4, 800)
    assert (out_b.name, opt_b.num_matched) == ("b", 9)
    pairs_options = opt_b.retrieval_kwargs["options"]
    assert pairs_options.retrieval.num_matched == 9 and pairs_options.verify.method == "none"
    assert cli.main(["reconstruct", str(tmp_path)]) == 2
    assert "needs an output folder" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbosity_flags_before_or_after_the_subcommand(tmp_path, fake_pairs, capsys, where):
    level = logging.getLogger("mirror_sfm").level
    for flag, expected in (("-q", logging.WARNING), ("-v", logging.DEBUG), (None, logging.INFO)):
        argv = ["pairs", str(tmp_path), "-o", str(tmp_path / "p.txt")]
        if flag:
            argv = [flag, *argv] if where == "before" else [*argv, flag]
        assert cli.main(argv) == 0
        assert fake_pairs[-1]["level"] == expected
        assert ("an INFO line" in capsys.readouterr().err) == (flag != "-q")
    assert logging.getLogger("mirror_sfm").level == level  # restored after the command


def test_gtgen_verbosity_before_or_after_the_subcommand(tmp_path):
    parser = gtgen_cli.build_parser()
    args = parser.parse_args(["triplets", str(tmp_path), "-q"])
    assert args.quiet is True and not args.verbose
    args = parser.parse_args(["-v", "triplets", str(tmp_path)])
    assert args.verbose is True


def test_version_on_both_commands(capsys):
    for main, prog in ((cli.main, "mirror_sfm"), (gtgen_cli.main, "gtgen")):
        with pytest.raises(SystemExit) as exc:
            main(["--version"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert prog in out and mirror_sfm.__version__ in out


def _all_parsers(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _all_parsers(sub, (*path, name))


@pytest.mark.parametrize("build", [cli.build_parser, gtgen_cli.build_parser], ids=["mirror_sfm", "gtgen"])
def test_every_subcommand_help_has_description_example_and_defaults(build):
    parser = build()
    assert parser.description and "example:" in parser.format_help()
    found = 0
    for path, sub in _all_parsers(parser):
        found += 1
        text = sub.format_help()
        assert sub.description and sub.description.splitlines()[0] in text, path
        assert "example:" in text and f" {' '.join(path)} " in text.split("example:")[1], path
        formatter = HelpFormatter(sub.prog)
        for action in sub._actions:
            if action.help in (None, argparse.SUPPRESS) or not action.help.strip():
                raise AssertionError(f"{path}: {action.option_strings or action.dest} has no help")
            shown = action.option_strings and not action.required and action.default is not argparse.SUPPRESS
            if shown and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                assert "%(default)" in formatter._get_help_string(action), (path, action.option_strings)
                assert "(default: " in text
    assert found >= 5


def test_existing_flag_names_still_parse():
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "pairs",
            "imgs",
            "-o",
            "p.txt",
            "-k",
            "3",
            "--verify",
            "none",
            "--shortlist",
            "9",
            "--verify-features",
            "100",
            "--database",
            "d.db",
            "--prmac-shortlist",
            "50",
            "--scores",
            "s.txt",
            "--features",
            "f.h5",
            "--weights",
            "imagenet",
            "--resize",
            "256",
            "--pooling",
            "gem",
            "--rerank",
            "none",
            "--query-expansion",
            "2",
            "--whitening",
            "database",
            "--exact-max",
            "10",
            "--sequential",
            "2",
            "--symmetric",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--num-workers",
            "0",
        ]
    )
    options = cli._pairs_options(args)
    assert options.retrieval == RetrievalOptions(
        num_matched=3, rerank="none", shortlist=50, query_expansion=2, whitening="database", exact_max=10
    )
    assert options.verify == VerifyOptions(method="none", shortlist=9, num_features=100)
    assert options.extraction == ExtractionOptions(
        resize=256, pooling="gem", weights="imagenet", batch_size=2, device="cpu", num_workers=0
    )
    assert (options.sequential, options.symmetric) == (2, True)
    args = parser.parse_args(
        [
            "reconstruct",
            "imgs",
            "out",
            "--pairs",
            "vocabtree",
            "--vocab-tree",
            "t.bin",
            "--num-matched",
            "7",
            "--mapper",
            "global",
            "--sequential-overlap",
            "3",
            "--camera-mode",
            "single",
            "--max-image-size",
            "800",
            "--max-num-features",
            "100",
        ]
    )
    assert (args.pairs, str(args.vocab_tree), args.num_matched, args.mapper) == ("vocabtree", "t.bin", 7, "global")
    args = parser.parse_args(["train", "--config", "t.yaml", "--out", "run", "--steps", "2"])
    assert (args.train_config.name, args.out) == ("t.yaml", "run")
    assert parser.parse_args(["train", "-o", "run2"]).out == "run2"
    assert parser.parse_args(["evaluate", "s", "-k", "5", "10"]).k == [5, 10]
    g = gtgen_cli.build_parser()
    for spelling in ("--out", "--output", "-o"):
        assert str(g.parse_args(["mesh", "--sparse", "s", spelling, "m.ply"]).out) == "m.ply"


def test_reconstruct_verifies_a_deeper_shortlist_than_pairs():
    """reconstruct (CLI and API) verifies RECONSTRUCT_SHORTLIST candidates, pairs 30; a flag or options still win."""
    from mirror_sfm.colmap import ReconstructionOptions
    from mirror_sfm.reconstruct import _verify_record
    from mirror_sfm.verify import RECONSTRUCT_SHORTLIST

    assert RECONSTRUCT_SHORTLIST == 50 != VerifyOptions().shortlist == 30
    parser = cli.build_parser()
    assert cli._verify_options(parser.parse_args(["pairs", "imgs", "-o", "p.txt"])).shortlist == 30
    args = parser.parse_args(["reconstruct", "imgs", "out"])
    assert cli._pairs_options(args, cli.PAIRS_FLAGS[:1]).verify.shortlist == 50
    assert cli._verify_options(parser.parse_args(["reconstruct", "imgs", "out", "--shortlist", "30"])).shortlist == 30
    assert _verify_record(ReconstructionOptions())["shortlist"] == 50  # the API, no options given
    given = ReconstructionOptions(retrieval_kwargs={"options": PairsOptions(verify=VerifyOptions(shortlist=12))})
    assert _verify_record(given)["shortlist"] == 12


def test_every_option_dataclass_field_is_documented():
    for cls in (ExtractionOptions, RetrievalOptions, VerifyOptions, PairsOptions, RayOptions):
        docs = field_docs(cls)
        assert set(docs) == set(cls.__dataclass_fields__), cls


@pytest.mark.parametrize(
    "command, argv",
    [
        ("mesh", ["mesh", "--sparse", "S", "-o", "M.ply"]),
        ("synth", ["synth", "--procedural", "boxes", "-o", "OUT"]),
        ("overlap", ["overlap", "--sparse", "S", "--mesh", "M.ply", "-o", "OUT"]),
    ],
)
def test_gtgen_without_its_extra_is_one_line(monkeypatch, capsys, command, argv):
    monkeypatch.setitem(sys.modules, "trimesh", None)  # import trimesh -> ImportError, as when not installed
    assert gtgen_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"gtgen {command} needs trimesh" in err[0] and "pip install 'mirror_sfm[gtgen]'" in err[0]


def test_gtgen_pyrender_engine_needs_pyrender(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyrender", None)
    assert gtgen_cli.main(["overlap", "--sparse", "S", "--mesh", "M.ply", "-o", "OUT", "--engine", "pyrender"]) == 2
    assert "needs pyrender" in capsys.readouterr().err
