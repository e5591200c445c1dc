"""Resource limits, clean interruption, atomic output files and determinism for a seed."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import circuitalg as ca
import circuitalg.circuits.composition as composition
from circuitalg.files import atomic_write

TESTS = Path(__file__).parent


def test_composition_block_rows_shrink_to_the_work_budget_and_refuse_below_one_row(monkeypatch) -> None:
    ref = ca.composition_scores(ca.zoo.planted_induction(), "k")
    monkeypatch.setattr(composition, "WORK_BYTES", (3 + 3) * 96 * 8 * 5)  # 5-row blocks
    # a fresh model each time: composition parts are computed once per model view and then reused
    np.testing.assert_allclose(ca.composition_scores(ca.zoo.planted_induction(), "k"), ref, rtol=0, atol=1e-14)
    monkeypatch.setattr(composition, "WORK_BYTES", 100)
    with pytest.raises(ca.TooLargeError, match=r"^composition scores of 3 readers and 3 writers at d_model=96 need "):
        ca.composition_scores(ca.zoo.planted_induction(), "k")


def test_atomic_write_leaves_nothing_behind_on_error_or_interrupt(tmp_path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")

    def fails(exc):
        def write(tmp: Path) -> None:
            tmp.write_text("half")
            raise exc

        return write

    for exc in (ValueError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            atomic_write(target, fails(exc))
        assert target.read_text() == "old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_save_is_atomic(tmp_path, monkeypatch) -> None:
    m = ca.zoo.planted_induction()
    path = tmp_path / "m.npz"
    ca.save(m, path)
    before = path.read_bytes()

    def interrupted(*args, **kwargs):
        Path(args[0]).write_bytes(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ca.save(m, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


# The child runs a real search (or a real report) and blocks at a point inside it, on its main
# thread, once the computation has demonstrably started: it prints "started" there and polls for
# the signal, so the workload cannot finish before the parent's SIGINT arrives however fast or slow
# the machine is. The KeyboardInterrupt leaves from that point, as a Ctrl-C landing there would
# (the poll only bounds how soon the handler runs; no outcome depends on timing).
BLOCK_AT = textwrap.dedent(
    """
    import threading, time

    def block_at(owner, name, call):
        \"\"\"Make ``owner.name`` block, after its ``call``-th return on the main thread, until a signal.\"\"\"
        real = getattr(owner, name)
        calls = [0]

        def blocking(*args, **kwargs):
            out = real(*args, **kwargs)
            if threading.current_thread() is threading.main_thread():
                calls[0] += 1
                if calls[0] == call:
                    print("started", flush=True)
                    while True:  # until SIGINT: its KeyboardInterrupt leaves from here
                        time.sleep(0.05)
            return out

        setattr(owner, name, blocking)
    """
)

LONG_SEARCH = BLOCK_AT + textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import circuitalg as ca
    import circuitalg.circuits.enumerate as search
    from model_helpers import random_model

    def model():
        return random_model(n_layers=6, n_heads=8, d_model=64, d_head=8, d_vocab=500, n_ctx=8, biases=False, seed=1)

    m = model()
    small = lambda mod: [(c.name, c.score) for c in ca.top_circuits(mod, k=5, max_heads=2).circuits]
    block_at(getattr(search, {owner!r}) if {owner!r} else search, {name!r}, {call!r})
    try:
        ca.top_circuits(m, k=60000, max_heads=3)
        print("finished", flush=True)
    except KeyboardInterrupt:
        # the interrupted model's caches must still give the same answers as a fresh model
        print("interrupted", small(m) == small(model()), flush=True)
    """
)


def _start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_start(proc: subprocess.Popen, stream: str) -> None:
    """Read ``stream`` of ``proc`` up to the child's "started" line (its workload is blocked there)."""
    seen = []
    for line in getattr(proc, stream):
        if line.strip() == "started":
            return
        seen.append(line)
    out, err = proc.communicate(timeout=60)
    pytest.fail(f"the child ended before its workload started (exit {proc.returncode}):\n"
                f"{''.join(seen)}{out}{err}")


# where the search is interrupted: while the engine fills the model's caches (the float64 head
# weights and source factors are cached, the source Gram matrices half made), and in the
# best-first search itself (after 200 expansions, of the many more that k=60000 needs)
@pytest.mark.parametrize("owner,name,call", [("", "_all_grams", 2), ("_Search", "expand", 200)],
                         ids=["precomputation", "search"])
def test_long_search_stops_promptly_on_ctrl_c_and_leaves_the_model_usable(owner, name, call) -> None:
    proc = _start([sys.executable, "-c", LONG_SEARCH.format(tests=str(TESTS), owner=owner, name=name, call=call)])
    _wait_for_start(proc, "stdout")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)  # a guard against a hang only
    assert proc.returncode == 0, err
    assert out.strip() == "interrupted True", (out, err)


CLI_REPORT = BLOCK_AT + textwrap.dedent(
    """
    import sys
    import circuitalg.cli as cli
    block_at(cli, "progress", 1)  # the report's first progress line: the analysis is under way
    sys.exit(cli.main(["report", "attn2l", "--out", {out!r}]))
    """
)


def test_cli_ctrl_c_exits_130_without_partial_files(tmp_path) -> None:
    out_dir = tmp_path / "out"
    proc = _start([sys.executable, "-c", CLI_REPORT.format(out=str(out_dir))])
    _wait_for_start(proc, "stdout")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # a guard against a hang only
    assert "[circuitalg] " in err, err  # the progress line was written before the signal
    assert proc.returncode == 130, err
    assert "circuitalg: interrupted; no partial files are left." in err
    assert "Traceback" not in err
    left = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert left == [], left


def _cli_json(args: list[str], hash_seed: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    out = subprocess.run([sys.executable, "-m", "circuitalg", *args, "--json"], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("args", [["circuits", "attn2l", "--top", "8"], ["scores", "attn2l", "--kind", "k"]])
def test_results_are_identical_across_processes_and_hash_seeds(args) -> None:
    assert _cli_json(args, "1") == _cli_json(args, "2")


def test_seeded_functions_are_deterministic_and_seeds_matter() -> None:
    m = ca.zoo.load("attn2l")
    a = ca.composition_baseline(m, "k", seed=3)
    assert a == ca.composition_baseline(m, "k", seed=3)
    assert a != ca.composition_baseline(m, "k", seed=4)
    t = ca.repeated_random_tokens(m, seq_len=8, n_seqs=4, seed=5)
    np.testing.assert_array_equal(t, ca.repeated_random_tokens(m, seq_len=8, n_seqs=4, seed=5))
    assert not np.array_equal(t, ca.repeated_random_tokens(m, seq_len=8, n_seqs=4, seed=6))
    h1, h2 = ca.head_table(m), ca.head_table(ca.zoo.load("attn2l"))
    assert h1.records() == h2.records()
    v = ca.verify(m.W_U @ m.W_E, m.W_U @ m.W_E, seed=7)
    assert v.holds


def _advice_setter():
    """NumPy's switch for its huge-page advice (returns the previous setting)."""
    from circuitalg.runtime import _hugepage_switch

    return _hugepage_switch()


def _advice_now() -> bool:
    setting = _advice_setter()
    now = setting(False)
    setting(now)
    return now


def test_hugepage_advice_changes_only_inside_an_entered_runtime(tmp_path, monkeypatch) -> None:
    """Loading and folding leave NumPy's advice alone; ``Runtime(hugepage_advice=False)`` (what the
    command, the report and streaming enter) turns it off while its block runs and restores it;
    the user's ``NUMPY_MADVISE_HUGEPAGE`` stands."""
    from model_helpers import random_model

    from circuitalg import report
    from circuitalg.model import io

    seen: list[bool] = []
    real = io.fold_params

    def fold_params(*args, **kwargs):  # records the advice while the folded arrays are made
        seen.append(_advice_now())
        return real(*args, **kwargs)

    monkeypatch.setattr(io, "fold_params", fold_params)
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    model = random_model(d_mlp=8, normalization="LN")
    path = ca.save(model, tmp_path / "m.safetensors")
    setting = _advice_setter()
    before = setting(True)
    try:
        folded = ca.load(path, fold=True)
        with ca.Runtime(hugepage_advice=False):
            again = ca.load(path, fold=True)
        assert seen == [True, False]
        assert _advice_now() is True  # restored afterwards
        np.testing.assert_array_equal(folded.params["W_E"], again.params["W_E"])
        setting(False)
        with ca.Runtime(hugepage_advice=True):
            assert _advice_now() is True
        assert _advice_now() is False  # the previous setting is restored, whichever it was
        setting(True)
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")  # the user's explicit choice stands
        seen.clear()
        with ca.Runtime(hugepage_advice=False):
            ca.load(path, fold=True)
        assert seen == [True]
        monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE")

        class Seen(Exception):
            pass

        def analyse(*args, **kwargs):
            raise Seen(_advice_now())

        monkeypatch.setattr(report, "analyse", analyse)
        with pytest.raises(Seen) as got:  # the report enters it itself
            report.write_report(ca.zoo.load("attn1l"), tmp_path / "out")
        assert got.value.args == (False,) and _advice_now() is True
    finally:
        setting(before)


def test_hugepage_advice_is_restored_when_threads_leave_their_blocks_in_any_order(monkeypatch) -> None:
    import threading

    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    setting = _advice_setter()
    before = setting(True)
    both_in, first_out = threading.Barrier(2), threading.Event()
    inside = []

    def run(leave_first: bool) -> None:
        with ca.Runtime(hugepage_advice=False):
            both_in.wait()
            if not leave_first:
                first_out.wait()  # leave after the other thread has left
            inside.append(_advice_now())
        if leave_first:
            first_out.set()

    try:
        threads = [threading.Thread(target=run, args=(flag,)) for flag in (True, False)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert inside == [False, False]  # off inside both blocks
        assert _advice_now() is True  # back on after the last one left
    finally:
        setting(before)


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_runtime_map_matches_the_serial_loop_and_restores_blas_threads() -> None:
    from circuitalg.runtime import AUTO, core_count

    rng = np.random.default_rng(0)
    A = rng.standard_normal((51, 64, 64))
    want = np.stack([a @ a for a in A])
    out = np.empty_like(A)
    inside: list[list[int]] = []
    before = _blas_threads()

    def square(lo: int, hi: int) -> tuple[int, int]:
        inside.append(_blas_threads())
        for i in range(lo, hi):
            np.matmul(A[i], A[i], out=out[i])
        return lo, hi

    parts = AUTO.map(square, len(A))
    np.testing.assert_array_equal(out, want)  # the same 2-D products, whichever thread made them
    assert parts[0][0] == 0 and parts[-1][1] == len(A)
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous chunks, in order
    assert _blas_threads() == before
    if core_count() >= 2 and max(before, default=1) > 1:
        assert len(parts) == min(core_count(), len(A))
        assert all(t == [1] * len(t) for t in inside)  # one BLAS thread per chunk while split


def test_runtime_map_nested_or_failing_runs_stay_correct() -> None:
    from circuitalg.runtime import AUTO

    inner: list[list[tuple[int, int]]] = []

    def outer(lo: int, hi: int) -> int:
        inner.append(AUTO.map(lambda a, b: (a, b), 10))  # another split while one runs
        return hi - lo

    assert sum(AUTO.map(outer, 8)) == 8
    assert all(r == [(0, 10)] for r in inner)  # the nested calls ran whole, in their caller's thread

    def boom(lo: int, hi: int) -> None:
        raise ValueError(f"chunk {lo}:{hi}")

    with pytest.raises(ValueError, match="chunk"):
        AUTO.map(boom, 4)
    assert AUTO.map(lambda a, b: (a, b), 4)[-1][1] == 4  # the lock was released


def _split_in_child(conn) -> None:  # module level: picklable for any start method
    from circuitalg.runtime import AUTO

    conn.send(AUTO.map(lambda lo, hi: (lo, hi), 6))
    conn.close()


def test_runtime_map_reuses_its_threads_and_works_after_fork() -> None:
    """The worker threads are kept between splits (no new thread, malloc arena or OpenBLAS buffer
    per call), chunks after the first run on them, and a forked child (which has none of its
    parent's threads) makes its own pool instead of waiting on the parent's forever."""
    import multiprocessing
    import threading

    from circuitalg.runtime import AUTO, core_count

    if core_count() < 2 or max(_blas_threads(), default=1) < 2:
        pytest.skip("one core or one BLAS thread: splits run in the caller's thread")
    names = lambda: AUTO.map(lambda lo, hi: threading.current_thread().name, 4)
    first, second = names(), names()
    assert first[0] == second[0] == threading.current_thread().name  # the caller takes the first chunk
    assert all(n.startswith("circuitalg") for n in first[1:])
    assert set(first[1:]) == set(second[1:])  # the same worker threads
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_split_in_child, args=(child,))
    p.start()
    try:
        assert parent.poll(60), "the forked child's split did not finish"
        got = parent.recv()
        p.join(10)
    finally:
        if p.is_alive():
            p.kill()
    assert got[0][0] == 0 and got[-1][1] == 6 and p.exitcode == 0


def test_transition_norm_bounds_bound_the_spectral_norms() -> None:
    """``_spectral_norm2_bound`` (the search's pruning bound) is at least ``‖M‖₂²`` and at most
    ``64^(1/8)`` times it, zero for a zero matrix, for a stack that is not a multiple of its batch."""
    from circuitalg.circuits.enumerate import _spectral_norm2_bound

    rng = np.random.default_rng(3)
    Ms = rng.standard_normal((70, 64, 64)) * np.logspace(-3, 3, 70)[:, None, None]
    Ms[10] = 0.0
    Ms[20] = np.outer(rng.standard_normal(64), rng.standard_normal(64))  # rank one: the bound is exact
    got = _spectral_norm2_bound(Ms)
    exact = np.linalg.norm(Ms, 2, axis=(1, 2)) ** 2
    assert got[10] == 0.0
    assert np.all(got >= exact * (1 - 1e-12))
    assert np.all(got <= exact * 64 ** (1 / 8) * (1 + 1e-12))
    assert got[20] == pytest.approx(exact[20], rel=1e-12)


def test_runtime_map_keeps_to_the_blas_thread_limit() -> None:
    """With BLAS limited to one thread (as ``OPENBLAS_NUM_THREADS=1`` does), the split uses one
    thread: the caller's."""
    import threading

    from threadpoolctl import threadpool_limits

    from circuitalg.runtime import AUTO

    seen: set[int] = set()

    def where(lo: int, hi: int) -> tuple[int, int]:
        seen.add(threading.get_ident())
        return lo, hi

    with threadpool_limits(1, user_api="blas"):
        assert AUTO.map(where, 8) == [(0, 8)]
    assert seen == {threading.get_ident()}
