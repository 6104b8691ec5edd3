"""`twotower demo` runs the whole path: simulate, train, evaluate, index, serve."""
from twotower.demo import run_demo


def test_demo_end_to_end(tmp_path, capsys):
    metrics = run_demo(tmp_path, impressions=20_000, mobius_impressions=8_000)
    out = capsys.readouterr().out
    assert metrics["requests"] > 0 and 0.0 < metrics["recall@50"] <= 1.0
    assert "index over" in out and "queries answered" in out
    assert (tmp_path / "runs" / "dssm" / "index" / "CURRENT").is_file()
    # the MOBIUS comparison step prints its table (CTR two-tower, relevance only, MOBIUS, + BRW)
    for row in ("CTR two-tower", "relevance only", "MOBIUS (lexical teacher)", "MOBIUS + BRW"):
        assert row in out, row
    assert "bad-case rate@10" in out
