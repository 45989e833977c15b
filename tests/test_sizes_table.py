"""benchmarks/sizes.py's table survives a round trip (its --add reads the rows it wrote back)."""
from benchmarks import sizes


def test_table_round_trip(tmp_path):
    rows = [{"depth": 6, "T": 64, "llmnb": 2316.4, "torch": 8823.0, "torch_model": "hf", "rss": 1055.0},
            {"depth": 24, "T": 1024, "llmnb": 81234.0, "torch": None, "torch_model": None, "rss": 15360.0}]
    path = tmp_path / "s.md"
    path.write_text("\n".join(sizes.table(rows)) + "\n")
    back = sizes.read_table(str(path))
    assert [(r["depth"], r["T"], r["llmnb"], r["torch"], r["torch_model"]) for r in back] == [
        (6, 64, 2316.0, 8823.0, "hf"), (24, 1024, 81234.0, None, None)]
    assert abs(back[0]["rss"] - 1055.0) <= 0.05 * 1024 and back[1]["rss"] == 15.0 * 1024


def test_missing_table_is_empty(tmp_path):
    assert sizes.read_table(str(tmp_path / "none.md")) == []
