"""The CUDA backend (kernels/).

Without a device (the default run on the development machines): cuda_available() is False and says why,
``to("cuda")`` raises a RuntimeError naming the reason and leaves the model working on the CPU, moving a model
between backends keeps every buffer, and the kernels compile (nvcc) while a broken kernel does not.

With a device (tests marked ``gpu``, skipped with the reason otherwise): every op of tests/test_ops.py and
tests/test_vision_ops.py run on the CUDA backend against the CPU backend on the same inputs, forward and
backward (normalised MSE ≤ 1e-7 in fp32); AdamW, dropout and the elementwise ops likewise; a full LoRA train
step of a checkpoint; the vision tower; greedy generation with identical tokens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import captionaura as ca
from captionaura import _core

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "reference" / "fixtures"
STATUS = ca.cuda_status()
HAVE_CUDA = ca.cuda_available()
NMSE_TOL = 1e-7
gpu = pytest.mark.gpu
needs_device = pytest.mark.skipif(not HAVE_CUDA, reason=f"no CUDA device: {STATUS['reason']}")


def nmse(got, want) -> float:
    """‖got − want‖² / ‖want‖² in float64 (0 when both are zero)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)), "non-finite values on the CUDA side"
    den = float(np.sum(want * want))
    num = float(np.sum((got - want) ** 2))
    return num / den if den > 0 else num


def tiny_text_model() -> ca.Lfm2Model:
    """The two-layer (conv + attention) LFM2 fixture checkpoint."""
    return ca.Lfm2Model.from_pretrained(FIXTURES / "lfm2" / "mixed")


# ---- without a device ------------------------------------------------------------------------------------

def test_cuda_status_is_consistent():
    assert set(STATUS) == {"compiled", "device_count", "device", "reason"}
    if STATUS["device_count"] > 0:
        assert STATUS["compiled"] and STATUS["reason"] == "" and STATUS["device"] and ca.cuda_available()
    else:
        assert not ca.cuda_available()
        assert isinstance(STATUS["reason"], str) and len(STATUS["reason"]) > 10  # names why (driver, device, build)
    assert _core.cuda_compiled() == STATUS["compiled"]


@pytest.mark.skipif(not STATUS["compiled"], reason="built without the CUDA backend")
def test_importing_maps_no_cublas_until_the_backend_opens_it():
    """cuBLAS is opened on first use, not linked (mapping it costs a process ~180 MB): a fresh interpreter's import
    maps none of it; cuda_load_libraries() (what the backend does first) opens it and resolves every entry point,
    without a device too."""
    script = (
        "import captionaura, captionaura._core as core\n"
        "maps = lambda: open('/proc/self/maps').read()\n"
        "assert 'libcublas' not in maps() and not core.cuda_libraries_loaded(), 'cuBLAS mapped at import'\n"
        "captionaura.cuda_status()\n"
        "assert 'libcublas' not in maps(), 'cuBLAS mapped by the device probe'\n"
        "core.cuda_load_libraries()\n"
        "assert 'libcublasLt' in maps() and core.cuda_libraries_loaded()\n"
        "core.cuda_load_libraries()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(HAVE_CUDA, reason="a CUDA device is present")
def test_to_cuda_without_a_device_raises_and_the_model_stays_usable():
    model = tiny_text_model()
    ids = np.array([[5, 17, 42, 99, 7]], np.int32)
    before = model.forward(ids).logits.copy()
    with pytest.raises(RuntimeError, match=r"CUDA is not available: .{10,}") as err:
        model.to("cuda")
    assert STATUS["reason"] in str(err.value)
    assert model.device == "cpu"
    np.testing.assert_array_equal(model.forward(ids).logits, before)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _core.set_ops_backend("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _core.cuda_array((2, 3), "float32")
    assert _core.set_ops_backend("cpu") == "cpu"  # the op bindings stayed on the CPU
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _core.cuda_fed_l2norm(np.zeros(4, np.float32), None)
    optimizer = ca.AdamW([np.zeros(4, np.float32)], [np.zeros(4, np.float32)])
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        optimizer.rebind([np.zeros(4, np.float32)], [np.zeros(4, np.float32)], device="cuda")
    assert optimizer.device == "cpu" and optimizer.exp_avg[0].flags.owndata  # left as it was


@pytest.mark.skipif(HAVE_CUDA, reason="a CUDA device is present")
def test_vl_model_to_cuda_without_a_device_raises_before_moving_anything():
    folder = sorted(p for p in (FIXTURES / "lfm2vl").iterdir() if (p / "model_reference.npz").is_file())[0]
    model = ca.Lfm2VlModel.from_pretrained(folder)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        model.to("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        model.vision.to("cuda")
    assert model.device == model.text.device == model.vision.device == "cpu"


def test_optimizer_rebind_keeps_state_and_checks_sizes():
    p, g = np.ones(6, np.float32), np.full(6, 0.5, np.float32)
    opt = ca.AdamW([p], [g], ca.AdamWConfig(lr=0.1))
    opt.step()
    moments = [opt.exp_avg[0].copy(), opt.exp_avg_sq[0].copy()]
    p2, g2 = p.copy(), g.copy()
    opt.rebind([p2], [g2], device="cpu")
    np.testing.assert_array_equal(opt.exp_avg[0], moments[0])
    np.testing.assert_array_equal(opt.exp_avg_sq[0], moments[1])
    opt.step()
    assert not np.array_equal(p2, p) and opt.params[0] is not p  # the new buffers are updated, not the old
    with pytest.raises(ValueError, match="sizes"):
        opt.rebind([np.zeros(5, np.float32)], [np.zeros(5, np.float32)])


def test_unknown_devices_are_value_errors():
    model = tiny_text_model()
    for bad in ("tpu", "cuda:1", "", "gpu"):
        with pytest.raises(ValueError, match="unknown device"):
            model.to(bad)
    assert model.to("CPU") is model and model.device == "cpu"


def test_moving_between_backends_keeps_parameters_adapters_gradients_and_optimizer():
    """ca_lfm2_set_backend's re-binding, exercised on the CPU: the profiling table is a distinct backend, so
    to("cpu") from it allocates, copies and re-points every view exactly as a move to CUDA does."""
    ids = np.array([[5, 17, 42, 99, 7, 250, 3]], np.int32)
    labels = np.array([[-100, 17, 42, 99, 7, 250, 3]], np.int32)
    models = []
    for _ in range(2):
        m = tiny_text_model()
        m.add_lora(ca.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
                                 init_lora_weights="gaussian"), seed=3)
        m.set_optimizer(ca.AdamWConfig(lr=1e-2))
        m.train_step({"input_ids": ids, "labels": labels})
        models.append(m)
    stay, moved = models
    moved._core.set_profiling(True)
    assert moved._core.backend == "cpu-profiled"
    old_params = moved._core.params()
    moved.to("cpu")
    assert moved._core.backend == "cpu" and moved.device == "cpu"
    assert moved._core.params().ctypes.data != old_params.ctypes.data  # really a new buffer
    np.testing.assert_array_equal(moved._core.params(), stay._core.params())
    np.testing.assert_array_equal(moved.lora_vector(), stay.lora_vector())
    np.testing.assert_array_equal(moved._core.lora_grads(), stay._core.lora_grads())
    # the next steps (optimizer state kept and re-pointed) agree bit for bit
    for _ in range(2):
        assert moved.train_step({"input_ids": ids, "labels": labels}) == \
            stay.train_step({"input_ids": ids, "labels": labels})
    np.testing.assert_array_equal(moved.lora_vector(), stay.lora_vector())
    np.testing.assert_array_equal(moved.forward(ids).logits, stay.forward(ids).logits)


# ---- the kernels compile (no device needed) ----------------------------------------------------------------

NVCC = shutil.which("nvcc")


def cublas_include() -> str | None:
    try:
        import nvidia.cu13 as cu13
    except ImportError:
        return None
    inc = Path(list(cu13.__path__)[0]) / "include"
    return str(inc) if (inc / "cublas_v2.h").is_file() else None


def nvcc_compile(source: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [NVCC, "-std=c++17", "-gencode", "arch=compute_90,code=sm_90", "-Werror", "all-warnings",
           "-Xcompiler", "-Wall,-Wextra,-Werror", f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'kernels'}",
           f"-I{cublas_include()}", "-c", str(source), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (the CUDA compile check needs the CUDA toolkit)")
@pytest.mark.skipif(cublas_include() is None, reason="cuBLAS headers not found (pip install nvidia-cublas)")
def test_kernels_compile_and_a_broken_kernel_fails_the_check(tmp_path):
    """`make cuda-compile-check` (part of `make test`) compiles every kernel for sm_80 and sm_90; here the most
    involved one for sm_90, and a copy with an error must fail, so the check can fail."""
    ok = nvcc_compile(ROOT / "kernels" / "attention.cu", tmp_path / "attention.o")
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.cu"
    broken.write_text((ROOT / "kernels" / "attention.cu").read_text().replace("const int jend =", "const int jend ="
                                                                                  " undeclared_name +", 1))
    bad = nvcc_compile(broken, tmp_path / "broken.o")
    assert bad.returncode != 0 and "undeclared_name" in bad.stderr
    unused = tmp_path / "unused.cu"  # warnings are errors too
    unused.write_text('#include "cuda_internal.cuh"\n__global__ void k(float *x) { int unused_variable = 1; }\n')
    assert nvcc_compile(unused, tmp_path / "unused.o").returncode != 0


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_cuda_header_is_plain_c(tmp_path):
    """ca_cuda.h is included by the C core (csrc/python/module.c): it must compile as C11 without CUDA."""
    src = tmp_path / "use.c"
    src.write_text('#include "captionaura/ca_cuda.h"\nint main(void) { return ca_cuda_backend.name == 0; }\n')
    res = subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                          f"-I{ROOT / 'csrc' / 'include'}", str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ---- with a device: every op, CUDA against the CPU ---------------------------------------------------------

def _op_cases():
    import test_ops
    import test_vision_ops
    return [(m, c) for m in (test_ops, test_vision_ops) for c in m.CASES]


OP_CASES = _op_cases()


def managed(a: np.ndarray) -> np.ndarray:
    """A copy of `a` in CUDA managed memory (what the CUDA ops read and write)."""
    a = np.asarray(a)
    out = _core.cuda_array(a.shape, a.dtype)
    out[...] = a
    return out


@pytest.fixture
def cuda_ops(monkeypatch):
    """Routes the op bindings to the CUDA table and makes the test harness allocate its arrays in managed
    memory (the cases build their inputs and outputs through f32 / nans / prefilled)."""
    import test_ops
    import test_vision_ops
    for mod in (test_ops, test_vision_ops):
        for name in ("f32", "nans"):
            if hasattr(mod, name):
                original = getattr(mod, name)
                monkeypatch.setattr(mod, name, lambda *a, _f=original: managed(_f(*a)))
        if hasattr(mod, "prefilled"):
            original = mod.prefilled
            monkeypatch.setattr(mod, "prefilled",
                                lambda shape, rng, _f=original: tuple(managed(x) for x in _f(shape, rng)))
    previous = _core.set_ops_backend("cuda")
    yield
    _core.set_ops_backend(previous)


def run_case(case):
    """Forward output and backward gradients of a Case on the current op backend (same upstream gradient)."""
    out, cache = case.c_fwd(case.x32(), case.consts)
    out = np.array(out)
    dout = case.make_dout(out.shape, np.random.default_rng(99))
    import test_ops
    grads = case.c_bwd(case.x32(), case.consts, test_ops.f32(dout), cache)
    return out, {k: np.array(v) for k, v in grads.items()}


@gpu
@needs_device
@pytest.mark.parametrize("module,case", OP_CASES, ids=[f"{m.__name__}:{c.name}" for m, c in OP_CASES])
def test_op_matches_cpu(module, case, request):
    cpu_out, cpu_grads = run_case(case)
    request.getfixturevalue("cuda_ops")
    gpu_out, gpu_grads = run_case(case)
    assert nmse(gpu_out, cpu_out) <= NMSE_TOL
    assert set(gpu_grads) == set(cpu_grads)
    for name in cpu_grads:
        assert nmse(gpu_grads[name], cpu_grads[name]) <= NMSE_TOL, name


@gpu
@needs_device
def test_adamw_dropout_and_elementwise_match_cpu():
    rng = np.random.default_rng(5)
    n = 100_003
    p, m, v, g = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    results = {}
    for backend in ("cpu", "cuda"):
        wrap = managed if backend == "cuda" else np.copy
        previous = _core.set_ops_backend(backend)
        try:
            pp, mm, vv, gg = wrap(p), wrap(m), wrap(v), wrap(g)
            for step in (1, 2, 3):
                _core.adamw_update(pp, mm, vv, gg, 1e-3, 0.9, 0.999, 1e-8, 0.01, step, 0.5)
            drop = wrap(np.full(n, np.nan, np.float32))
            _core.dropout_forward(drop, gg, 0.25, 1234)
            acc = wrap(p)
            _core.add_inplace(acc, gg)
            _core.scale_inplace(acc, 0.5)
            results[backend] = [np.array(x) for x in (pp, mm, vv, drop, acc)] + [_core.sum_squares(gg)]
        finally:
            _core.set_ops_backend(previous)
    for got, want in zip(results["cuda"][:-1], results["cpu"][:-1]):
        assert nmse(got, want) <= NMSE_TOL
    np.testing.assert_array_equal(results["cuda"][3] == 0, results["cpu"][3] == 0)  # the same dropout mask
    assert results["cuda"][-1] == pytest.approx(results["cpu"][-1], rel=1e-12)


# ---- with a device: whole models ---------------------------------------------------------------------------

@gpu
@needs_device
def test_lora_train_step_matches_cpu():
    ids = np.array([[5, 17, 42, 99, 7, 250, 3, 11], [8, 9, 10, 11, 12, 13, 0, 0]], np.int32)
    labels = np.where(ids == 0, -100, ids).astype(np.int32)
    labels[:, 0] = -100
    mask = (ids != 0).astype(np.int32)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    runs = {}
    for device in ("cpu", "cuda"):
        model = tiny_text_model()
        model.add_lora(ca.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
                                     init_lora_weights="gaussian"), seed=3)
        model.to(device)
        assert model.device == device
        model.set_optimizer(ca.AdamWConfig(lr=1e-3))
        loss = model.loss_and_grad(ids, labels, mask)
        grads = np.array(model._core.lora_grads())
        model.optimizer.step()
        second = model.train_step(batch)
        runs[device] = (loss, grads, np.array(model.lora_vector()), second)
    (l_cpu, g_cpu, p_cpu, s_cpu), (l_gpu, g_gpu, p_gpu, s_gpu) = runs["cpu"], runs["cuda"]
    assert l_gpu == pytest.approx(l_cpu, rel=1e-5)
    assert nmse(g_gpu, g_cpu) <= NMSE_TOL
    assert nmse(p_gpu, p_cpu) <= NMSE_TOL
    assert s_gpu == pytest.approx(s_cpu, rel=1e-5)


@gpu
@needs_device
def test_greedy_generation_gives_identical_tokens():
    prompts = [np.array([5, 17, 42, 99, 7, 250], np.int32), np.array([8, 9, 10], np.int32)]
    cpu_model = tiny_text_model()
    cuda_model = tiny_text_model().to("cuda")
    for p in prompts:
        want = cpu_model.generate(p, max_new_tokens=24, min_new_tokens=24, eos_token_id=2)
        got = cuda_model.generate(p, max_new_tokens=24, min_new_tokens=24, eos_token_id=2)
        np.testing.assert_array_equal(got, want)


@gpu
@needs_device
def test_vision_language_model_forward_and_gradients_match_cpu():
    folder = sorted(p for p in (FIXTURES / "lfm2vl").iterdir() if (p / "model_reference.npz").is_file())[0]
    pixels = dict(np.load(folder / "reference.npz"))
    ref = dict(np.load(folder / "model_reference.npz"))
    args = dict(pixel_values=pixels["pixel_values"], spatial_shapes=pixels["spatial_shapes"],
                pixel_attention_mask=pixels["pixel_attention_mask"])
    out = {}
    for device in ("cpu", "cuda"):
        model = ca.Lfm2VlModel.from_pretrained(folder).to(device)
        logits = model.forward(ref["input_ids"], **args).logits
        loss = model.loss_and_grad(ref["input_ids"], ref["labels"], **args)
        out[device] = (np.array(logits), loss, {k: np.array(v) for k, v in model.gradients().items()})
    assert nmse(out["cuda"][0], out["cpu"][0]) <= NMSE_TOL
    assert out["cuda"][1] == pytest.approx(out["cpu"][1], rel=1e-5)
    # the attention key bias's true gradient is 0 and both sides hold rounding noise there (see test_vl.py):
    # squared norms are floored at (1e-4 · the whole gradient's norm)²
    floor2 = 1e-8 * sum(float(np.sum(g.astype(np.float64) ** 2)) for g in out["cpu"][2].values())
    for name, g in out["cpu"][2].items():
        diff = np.asarray(out["cuda"][2][name], np.float64) - g
        assert float(np.sum(diff ** 2)) / max(float(np.sum(g.astype(np.float64) ** 2)), floor2) <= NMSE_TOL, name


@gpu
@needs_device
def test_vision_language_lora_gradients_match_cpu():
    """LoRA on every linear of the language model, the vision tower and the projector (PEFT's adapter
    fixture): the LoRA gradients on CUDA equal the CPU ones."""
    base = FIXTURES / "lfm2vl" / "base"
    case = FIXTURES / "vl_lora" / "all_linear"
    pixels, ref = dict(np.load(base / "reference.npz")), dict(np.load(case / "reference.npz"))
    args = dict(pixel_values=pixels["pixel_values"], spatial_shapes=pixels["spatial_shapes"],
                pixel_attention_mask=pixels["pixel_attention_mask"])
    out = {}
    for device in ("cpu", "cuda"):
        model = ca.Lfm2VlModel.from_pretrained(base)
        model.load_adapter(case / "adapter")
        model.to(device)
        loss = model.loss_and_grad(ref["input_ids"], ref["labels"], **args)
        out[device] = (loss, {k: np.array(v) for k, v in model.lora_gradients().items()})
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=1e-5)
    for name, g in out["cpu"][1].items():
        assert nmse(out["cuda"][1][name], g) <= NMSE_TOL, name


# ---- with a device: the CUDA-only launchers (decode kernels, bf16 GEMM, federated aggregation) ----------------

@gpu
@needs_device
def test_attention_decode_equals_the_last_causal_query():
    rng = np.random.default_rng(11)
    B, Tk, NH, NKV, HS = 2, 600, 4, 2, 64  # 600 keys: three chunks merged by log-sum-exp
    q = rng.standard_normal((B, 1, NH, HS)).astype(np.float32)
    k, v = (rng.standard_normal((B, Tk, NKV, HS)).astype(np.float32) for _ in range(2))
    want, att = np.zeros((B, 1, NH, HS), np.float32), np.zeros((B, NH, 1, Tk), np.float32)
    _core.attention_forward(want, att, q, k, v, None, True, Tk - 1)
    out = _core.cuda_array((B, NH, HS), np.float32)
    _core.cuda_attention_decode(out, managed(q[:, 0]), managed(k), managed(v))
    assert nmse(out, want[:, 0]) <= NMSE_TOL


@gpu
@needs_device
def test_shortconv_step_continues_like_the_prefill_with_state():
    rng = np.random.default_rng(12)
    B, C, L, T = 3, 96, 3, 5
    z = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    w = rng.standard_normal((C, L)).astype(np.float32)
    y_ref, u_ref, c_ref = (np.zeros((B, T, C), np.float32) for _ in range(3))
    _core.shortconv_forward(y_ref, u_ref, c_ref, z, w, None)  # the whole sequence from zero state
    state = _core.cuda_array((B, L - 1, C), np.float32)
    y, u, c = (_core.cuda_array((B, C), np.float32) for _ in range(3))
    wd = managed(w)
    for t in range(T):  # token by token, the state carried on the device
        _core.cuda_shortconv_step(y, u, c, state, managed(z[:, t]), wd)
        assert nmse(y, y_ref[:, t]) <= NMSE_TOL and nmse(c, c_ref[:, t]) <= NMSE_TOL
    np.testing.assert_array_equal(np.array(state), u_ref[:, T - (L - 1):])


def bf16_round(a: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 (round to nearest even) → float32, in NumPy."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


@gpu
@needs_device
def test_bf16_weight_gemm_accumulates_in_fp32():
    rng = np.random.default_rng(13)
    N, C, OC = 37, 300, 130
    x = rng.standard_normal((N, C)).astype(np.float32)
    w = rng.standard_normal((OC, C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32)
    out = _core.cuda_array((N, OC), np.float32)
    _core.cuda_linear_bf16(out, managed(x), managed(w), managed(b))
    want = bf16_round(x).astype(np.float64) @ bf16_round(w).astype(np.float64).T + b
    assert nmse(out, want) <= NMSE_TOL
    assert nmse(out, x.astype(np.float64) @ w.T + b) > 1e-7  # bf16 rounding really happened


@gpu
@needs_device
def test_federated_kernels_match_the_cpu_aggregation():
    rng = np.random.default_rng(14)
    n = 50_001
    clients = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    weights = [10.0, 3.0, 7.0]
    x0 = rng.standard_normal(n).astype(np.float32)
    cpu_sum, gpu_sum = np.zeros(n), _core.cuda_array((n,), np.float64)
    for c, w in zip(clients, weights):
        _core.fed_acc_add(cpu_sum, c, w)
        _core.cuda_fed_acc_add(gpu_sum, managed(c), w)
    np.testing.assert_allclose(np.array(gpu_sum), cpu_sum, rtol=1e-12, atol=1e-12)
    total = sum(weights)
    mean_cpu, mean_gpu = np.zeros(n, np.float32), _core.cuda_array((n,), np.float32)
    _core.fed_acc_mean(mean_cpu, cpu_sum, total)
    _core.cuda_fed_acc_mean(mean_gpu, gpu_sum, total)
    assert nmse(mean_gpu, mean_cpu) <= NMSE_TOL
    for kind in (0, 1, 2):
        xc, mc, vc = x0.copy(), np.zeros(n, np.float32), np.full(n, 1e-6, np.float32)
        xg, mg, vg = managed(xc), managed(mc), managed(vc)
        for _ in range(2):
            _core.fed_fedopt_step(xc, mc, vc, cpu_sum, total, kind, 0.1, 0.9, 0.99, 1e-3)
            _core.cuda_fed_fedopt_step(xg, mg, vg, gpu_sum, total, kind, 0.1, 0.9, 0.99, 1e-3)
        for got, want in ((xg, xc), (mg, mc), (vg, vc)):
            assert nmse(got, want) <= NMSE_TOL, kind
    xc, vc = x0.copy(), np.zeros(n, np.float32)
    xg, vg = managed(xc), managed(vc)
    for first in (True, False):
        _core.fed_fedavgm_step(xc, vc, cpu_sum, total, 1.0, 0.9, first)
        _core.cuda_fed_fedavgm_step(xg, vg, gpu_sum, total, 1.0, 0.9, first)
    assert nmse(xg, xc) <= NMSE_TOL and nmse(vg, vc) <= NMSE_TOL
    xd, refd = managed(clients[0]), managed(x0)
    assert _core.cuda_fed_l2norm(xd, refd) == pytest.approx(_core.fed_l2norm(clients[0], x0), rel=1e-12)
    for clip in (1.0, 1e6):  # clipped, and passed through untouched
        out_c, out_g = np.zeros(n, np.float32), _core.cuda_array((n,), np.float32)
        norm_c = _core.fed_clip(out_c, clients[0], x0, clip)
        norm_g = _core.cuda_fed_clip(out_g, xd, refd, clip)
        assert norm_g == pytest.approx(norm_c, rel=1e-12)
        assert nmse(out_g, out_c) <= NMSE_TOL


@gpu
@needs_device
def test_cuda_only_bindings_reject_host_arrays():
    with pytest.raises(ValueError, match="host memory"):
        _core.cuda_fed_l2norm(np.zeros(4, np.float32), None)
