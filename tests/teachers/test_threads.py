"""Two Beam harness threads share one process's loaded teachers: no errors, and the same bytes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from teachers import TeacherEnsemble
from teachers.clip_teachers import load_teacher
from teachers.determinism import batch_invariant, use_batch_invariant_kernels

_SWITCHES = ("flash", "mem_efficient", "cudnn", "math")


def _kernels() -> dict[str, bool]:
    return {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")() for name in _SWITCHES}


@pytest.fixture
def fresh_process_kernels() -> Iterator[None]:
    """Every attention kernel enabled, as in a new process; the session's switches come back after."""
    saved = _kernels()
    for name in _SWITCHES:
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(True)
    yield
    for name, enabled in saved.items():
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(enabled)


MATH_ONLY = {"flash": False, "mem_efficient": False, "cudnn": False, "math": True}


def _run_together(*jobs: Callable[[], Any]) -> list[Any]:
    """Runs the jobs in one thread each; re-raises the first failure."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    return results


def test_one_thread_finishing_leaves_the_kernels_set_for_the_other(fresh_process_kernels: None) -> None:
    both_inside = threading.Barrier(2, timeout=10)
    first_left = threading.Event()

    def first() -> None:
        with batch_invariant("cpu"):
            both_inside.wait()
        first_left.set()

    def second() -> dict[str, bool]:
        with batch_invariant("cpu"):
            both_inside.wait()
            assert first_left.wait(timeout=10)
            return _kernels()  # what this thread's next attention layer would use

    assert _run_together(first, second)[1] == MATH_ONLY
    assert _kernels() == MATH_ONLY  # and after both have left


def test_loading_a_cpu_teacher_sets_the_kernels_for_the_process(
    fresh_process_kernels: None, tiny_checkpoints: dict[str, str]
) -> None:
    use_batch_invariant_kernels("cuda")  # on a GPU nothing is promised, so nothing is changed
    assert all(_kernels().values())
    load_teacher(tiny_checkpoints["clip-a"])
    assert _kernels() == MATH_ONLY


def test_concurrent_embedding_gives_the_bytes_of_one_thread(
    tiny_checkpoints: dict[str, str], tiny_hf_models: dict[str, Path]
) -> None:
    specs = [tiny_checkpoints["clip-a"], f"hf:{tiny_hf_models['clip']}", f"hf:{tiny_hf_models['siglip']}"]
    ensemble = TeacherEnsemble.load(specs, micro_batch=4, text_micro_batch=4)
    generator = torch.Generator().manual_seed(7)
    views = [torch.randint(0, 256, (6, 3, 96, 96), dtype=torch.uint8, generator=generator) for _ in range(2)]
    texts = [[f"a {w} photo of {n} dogs" for n in range(9)] for w in ("red", "blue")]
    alone = [(ensemble.embed_images(v), ensemble.embed_texts(t)) for v, t in zip(views, texts, strict=True)]

    def job(i: int) -> Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]:
        return lambda: [(ensemble.embed_images(views[i]), ensemble.embed_texts(texts[i])) for _ in range(4)]

    for i, repeats in enumerate(_run_together(job(0), job(1))):
        for images, captions in repeats:
            assert torch.equal(images, alone[i][0]) and torch.equal(captions, alone[i][1])


def test_a_transformers_tokenizer_is_never_entered_by_two_threads(
    tiny_hf_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast tokenizer rewrites its padding/truncation state in a call: concurrent calls may raise
    "Already borrowed". The spy below records how many threads are inside the tokenizer at once."""
    from transformers import AutoTokenizer

    inside, most = 0, 0
    counting = threading.Lock()
    real_from_pretrained = AutoTokenizer.from_pretrained

    class Spy:
        def __init__(self, tokenizer: Any) -> None:
            self.tokenizer = tokenizer

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal inside, most
            with counting:
                inside += 1
                most = max(most, inside)
            time.sleep(0.02)  # long enough for the other thread to arrive
            try:
                return self.tokenizer(*args, **kwargs)
            finally:
                with counting:
                    inside -= 1

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: Spy(real_from_pretrained(*a, **k)))
    teacher = load_teacher(f"hf:{tiny_hf_models['clip']}")
    expected = teacher.encode_texts(["a dog", "a red car"])
    results = _run_together(*[lambda: [teacher.encode_texts(["a dog", "a red car"]) for _ in range(5)]] * 2)
    assert most == 1
    assert all(torch.equal(r, expected) for repeats in results for r in repeats)
