"""Progress bars: live on a terminal, a line now and then in a file or a pipe."""

import io

from resnest_gluon.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_file_gets_whole_lines_not_carriage_returns():
    out = io.StringIO()
    for _ in progress_bar(range(1000), file=out, desc="work", log_interval=3600):
        pass
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # the first and the final state, nothing per step
    assert 1 <= len(lines) <= 3, lines
    assert lines[-1].startswith("work") and "1000/1000" in lines[-1]


def test_a_terminal_gets_the_live_bar():
    out = _Terminal()
    for _ in progress_bar(range(50), file=out, desc="work", mininterval=0, miniters=1):
        pass
    assert out.getvalue().count("\r") >= 50


def test_native_noise_is_held_back_and_the_rest_written(capfd):
    """What C++ writes to descriptor 2 in the block comes back, but for MXNet's pooling notes."""
    import os

    from resnest_gluon.training.quiet import held_native_stderr

    with held_native_stderr():
        os.write(
            2,
            b"[04:32:30] mkldnn_pooling.cc:58: MKLDNN Pooling: training with prop_kind is forward_scoring\n",
        )
        os.write(2, b"a real warning\n")
    err = capfd.readouterr().err
    assert err == "a real warning\n"
