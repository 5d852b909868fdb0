"""benchmarks/selftrain_sweep.py: the variants file (labels, YAML values, comments, and its errors)."""

import sys

import pytest

from helpers import REPO, load_script

sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its neighbours, as when run
sweep = load_script(REPO / "benchmarks" / "selftrain_sweep.py")


def test_variants_are_labels_with_yaml_values(tmp_path):
    path = tmp_path / "variants.txt"
    path.write_text("# the committed params first\nbaseline\n\n"
                    "wide classifier.channels=[32,64,128,192] selftrain.rounds=16  # 3 times slower on a CPU\n"
                    "free selftrain.exclude_labelled=false selftrain.synthetic_share=0.5\n")
    assert sweep.parse_variants(path) == [
        ("baseline", {}),
        ("wide", {"classifier.channels": [32, 64, 128, 192], "selftrain.rounds": 16}),
        ("free", {"selftrain.exclude_labelled": False, "selftrain.synthetic_share": 0.5}),
    ]


@pytest.mark.parametrize("text, message", [("ok selftrain.rounds=4\nbroken selftrain.rounds 4\n", ":2: expected"),
                                           ("# nothing but a comment\n", "no variant")])
def test_a_bad_variants_file_names_its_line(tmp_path, text, message):
    path = tmp_path / "variants.txt"
    path.write_text(text)
    with pytest.raises(SystemExit, match=message) as raised:
        sweep.parse_variants(path)
    assert str(path) in str(raised.value)
