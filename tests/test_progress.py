"""The one progress helper: a bar on a terminal, silence when quiet or not a terminal."""
import io

from twotower.progress import Silent, chunk_starts, progress, set_quiet


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_silent_when_quiet_or_piped(monkeypatch):
    monkeypatch.delenv("TWOTOWER_QUIET", raising=False)
    tty = FakeTTY()
    assert list(progress(range(5), desc="encoding items", file=tty, delay=0)) == list(range(5))
    assert "encoding items" in tty.getvalue() and "/5 [" in tty.getvalue()  # a tqdm bar of 5
    piped = io.StringIO()
    bar = progress(range(5), file=piped)
    assert isinstance(bar, Silent) and list(bar) == list(range(5)) and piped.getvalue() == ""
    set_quiet(True)
    try:
        assert isinstance(progress(range(3), file=FakeTTY(), delay=0), Silent)
    finally:
        set_quiet(False)
    monkeypatch.setenv("TWOTOWER_QUIET", "1")
    assert isinstance(progress(range(3), file=FakeTTY(), delay=0), Silent)
    assert isinstance(progress(range(3), enabled=False), Silent)


def test_chunk_starts_is_range_whatever_the_bar():
    assert list(chunk_starts(10, 4)) == [0, 4, 8] == list(range(0, 10, 4))
    assert list(chunk_starts(0, 4)) == []
