#!/usr/bin/env bash
# GPU check of wise: build with CUDA on a CPU-only machine, then on a GPU machine check
# CPU-vs-GPU parity on the test fixtures and benchmark against PyTorch AMP bf16.
#
# Usage:
#   scripts/gpu-check.sh build            # here, no GPU needed: writes .gpu/wise.gz
#   scripts/gpu-check.sh device [OUTDIR]  # on the GPU machine, from the repo root, with .gpu/
#                                         # (OUTDIR: $OUT if set, else gpu-results/)
#
# build: installs NVIDIA's CUDA 13.0 compiler and libraries from PyPI into a venv
#   (WISE_CUDA_VENV, default ~/.cache/wise-cuda-py; nvvm pinned to 13.0.88, whose PTX a
#   CUDA 13.0 driver accepts), makes a folder of `lib*.so` links to those wheels plus a stub
#   `libcuda.so` (soname libcuda.so.1; the real one comes with the GPU driver) because
#   candle links the CUDA libraries at build time, and builds `wise` with `--features cuda`
#   for compute capability 9.0 (CUDA_COMPUTE_CAP to change) into CARGO_TARGET_DIR (default
#   ~/.cache/wise-cuda-target). The stripped binary is gzipped to .gpu/wise.gz.
#
# device: LD_LIBRARY_PATH points at the CUDA libraries of the machine's PyTorch (its
#   nvidia/cu13/lib); the driver provides libcuda. Then
#   (a) parity: `wise embed` of the fixture CLIP (tests/fixtures) on CPU and on CUDA in f32
#       and bf16 (and of the GELU fixture in f32), and 3 `wise train` steps of a fixture classifier on a tiny ImageFolder made
#       from tests/fixtures/images, CPU vs CUDA; the same in bf16 for the fixture with 64-wide
#       heads (made here), where flash attention runs, with and without it
#       (WISE_FLASH_ATTENTION=off); max differences printed and checked;
#   (b) throughput, `wise bench` against scripts/bench_torch.py (HF transformers, AMP bf16
#       via torch.autocast) in the same run, ViT-B/32 and ViT-B/16, inference and training
#       steps, with the ratio and MFU (model FLOPs / H100 SXM dense bf16 peak, 989 TFLOP/s),
#       and the training steps' memory: the least `wise train`'s check counts against the
#       memory pool's peak (ok/FAIL: it must not be above) and PyTorch's peak;
#   (c) where wise's GPU time goes: `WISE_PROFILE=1 wise bench` (ViT-B/16), each part of the
#       forward and backward and each phase of a training step timed between device
#       synchronisations, as built and in variants with one setting each: fused=off
#       (WISE_CUDA_FUSED=off: candle's op-by-op kernels), allocator=candle
#       (WISE_CUDA_ALLOCATOR=candle: candle's memory pool settings), padding=off
#       (WISE_ATTENTION_PADDING=off), flash=off (WISE_FLASH_ATTENTION=off: cuBLAS products
#       around a softmax kernel). PROFILE_VARIANTS="default flash=off" picks some.
#   (d) the host's data path: `wise bench --mode preprocess` of the photo-sized JPEGs that
#       `build` puts in .gpu/photos, on all cores, one thread per physical core (with SMT)
#       and one core (the CPU decodes what the GPU evaluates); then ViT-B/16 bf16 training
#       steps on the GPU fed from those photos (shuffled, random resized crops, decoded on
#       the host) against the same steps on random pixels, wise and PyTorch (a DataLoader
#       of a worker per core, open_clip's training transform), and wise with one core left
#       to the thread that launches the GPU's work: does the host keep up?
#   (e) a ViT-L/14 training step at batch 4096: `wise train`'s memory check must refuse it
#       before it starts (naming the batch that fits), and run anyway (WISE_MEMORY_CHECK=off)
#       its out-of-memory error must come with the advice (a smaller --batch-size, a larger
#       --grad-accum);
#   (f) the host CPU, when it has AVX-512 or AVX2: wise's f32 kernel from packed weights
#       against the BLAS on ViT-B/32's products at batch 1 and 32 (`wise bench --mode
#       sgemm`; with AVX-512, batch 1 in the AVX2 form too), and ViT-B/32 inference one image
#       at a time with the kernel and with the BLAS alone (WISE_F32_KERNEL=off); when it
#       has AVX512_BF16 (Intel's side of bf16 on CPU, not measured on this project's
#       machines) also ViT-B/32 inference at batch 32, wise in f32 and with
#       WISE_CPU_BF16=1 against PyTorch HF in f32 and under CPU autocast, one after the other;
#       with SMT, f32 again on one thread per physical core on both sides.
#   Everything lands in OUTDIR: gpu-check.log, parity.jsonl, bench.jsonl, summary.md,
#   profile.jsonl, data-path.jsonl, host-cpu.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

build() {
    local venv=${WISE_CUDA_VENV:-$HOME/.cache/wise-cuda-py}
    local libs=${WISE_CUDA_LIBS:-$HOME/.cache/wise-cuda-libs}
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/wise-cuda-target}
    if [[ ! -x "$venv/bin/python" ]]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-crt==13.0.88 "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" \
        "nvidia-cublas==13.0.*" "nvidia-cuda-nvrtc==13.0.*" nvidia-curand
    local cu
    cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
    export PATH="$cu/bin:$cu/nvvm/bin:$PATH" CUDA_ROOT="$cu" CUDA_PATH="$cu"
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

    mkdir -p "$libs"
    for f in "$cu"/lib/lib*.so.*; do
        local name
        name=$(basename "$f")
        ln -sf "$f" "$libs/${name%%.so.*}.so"
    done
    export RUSTFLAGS="${RUSTFLAGS:-} -L $libs"

    # libcuda comes with the driver, which a build machine may lack. candle links it, so
    # give the linker a stub with the driver symbols the cudarc crate uses (empty bodies:
    # never called, the driver's library replaces it at run time via its soname).
    if [[ ! -e "$libs/libcuda.so" ]]; then
        echo "== libcuda stub: building the cudarc crate to list the driver symbols it needs"
        cargo build --release -p wise-cli --features cuda || true
        local rlib
        rlib=$(ls -t "$CARGO_TARGET_DIR"/release/deps/libcudarc-*.rlib | head -n 1)
        nm -u "$rlib" 2>/dev/null | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ { print $2 }' | sort -u \
            | awk '{ print "void " $1 "(void) {}" }' > "$libs/libcuda-stub.c"
        echo "   $(wc -l < "$libs/libcuda-stub.c") symbols"
        cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$libs/libcuda.so" "$libs/libcuda-stub.c"
    fi

    echo "== cargo build --release -p wise-cli --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
    cargo build --release -p wise-cli --features cuda
    # Stripped and gzipped: the embedded PTX of candle's kernels makes the binary ~70 MB,
    # ~20 MB compressed (the device tool carries at most 64 MiB).
    mkdir -p .gpu
    strip -o .gpu/wise "$CARGO_TARGET_DIR/release/wise"
    gzip -9f .gpu/wise
    {
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
        echo "nvcc: $(nvcc --version | tail -n 1)"
        echo "rustc: $(rustc --version)"
    } > .gpu/BUILD_INFO
    # 256 photo-sized JPEGs (~18 MB) for the data-path check on the GPU host, whose CPU
    # decodes what its GPU evaluates (scripts/bench_decode.py --make-photos, from CIFAR-10).
    local archive=../shared/datasets/cifar10/cifar10-jpeg.tar.gz py
    for py in "${WISE_PY:-}" .venv-fixtures/bin/python "$HOME/.cache/wise-py/bin/python"; do
        [[ -n "$py" && -x "$py" ]] && "$py" -c 'import PIL, numpy' 2>/dev/null && break
        py=
    done
    rm -rf .gpu/photos
    if [[ -f $archive && -n "$py" ]]; then
        local cifar
        cifar=$(mktemp -d)
        tar xzf "$archive" -C "$cifar" test
        "$py" scripts/bench_decode.py --data "$cifar/test" --limit 256 --make-photos .gpu/photos
        rm -rf "$cifar"
    else
        echo "no $archive or no Python with Pillow: no photos for the data-path check"
    fi
    ls -la .gpu
    echo "next, on the GPU machine from the repo root (carry .gpu): scripts/gpu-check.sh device"
}

device() {
    local out=${1:-${OUT:-gpu-results}}
    mkdir -p "$out"
    local work
    work=$(mktemp -d)
    exec > >(tee "$out/gpu-check.log") 2>&1
    local py=${WISE_PY:-python3}
    # GPU_DEVICE=cpu, small *_BATCH and ITERS try the script out on a machine without a GPU.
    export GPU_DEVICE=${GPU_DEVICE:-cuda}
    local wise=${WISE_BIN:-}
    if [[ -z "$wise" ]]; then
        wise="$work/wise"
        gunzip -c .gpu/wise.gz > "$wise"
        chmod +x "$wise"
    fi
    # The CUDA libraries of PyTorch's nvidia-* wheels (nvidia/cu13/lib, and any other
    # nvidia/*/lib); the driver provides libcuda.so.1.
    local cu
    cu=$("$py" -c 'import glob, nvidia, os; print(":".join(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib")))))' || true)
    export LD_LIBRARY_PATH="$cu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

    echo "== machine"
    cat .gpu/BUILD_INFO 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    echo "torch: $("$py" -c 'import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())')"
    echo "cpu cores: $(nproc) ($(lscpu | awk -F': *' '/^Model name/{n=$2} /^Thread\(s\) per core/{t=$2} END{printf "%s, %s threads per core", n, t}'))"
    "$wise" --version
    ldd "$wise" | grep "not found" && echo "MISSING LIBRARIES above (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"

    # Each part's wall time, so that the next run can be sized to the device time left.
    timed() { local start=$SECONDS; "$@"; local rc=$?; echo "-- $1: $((SECONDS - start)) s"; return $rc; }
    timed parity "$wise" "$py" "$work" "$out" || echo "PARITY FAILED (see above); benchmarks follow"
    timed benchmarks "$wise" "$py" "$out"
    timed data_path "$wise" "$py" "$out"
    timed out_of_memory "$wise"
    timed host_cpu "$wise" "$py" "$out"
    echo "-- device steps: $SECONDS s in all"
    rm -rf "$work"
}

# CPU vs CUDA on the fixtures: features, and 3 training steps.
parity() {
    local wise=$1 py=$2 work=$3 out=$4
    # `wise embed` of fixture model $1 into $work/$2.safetensors on device $3, with the
    # environment settings after them; `wise train` (3 steps) of classifier $work/$1 into
    # $work/$2 likewise.
    embed_run() {
        local m=$1 name=$2 dev=$3
        shift 3
        env "$@" "$wise" embed --model "$m" --images tests/fixtures/images --texts tests/fixtures/texts.txt \
            --device "$dev" --out "$work/$name.safetensors"
    }
    train_run() {
        local classifier=$1 name=$2 dev=$3
        shift 3
        env "$@" "$wise" train --model "$work/$classifier.safetensors" --data "$work/tiny" --max-steps 3 \
            --warmup 0 --lr 1e-3 --batch-size 16 --no-augment --device "$dev" --out "$work/$name"
    }

    echo "== parity: wise embed, CPU vs CUDA"
    local model=tests/fixtures/clip-tiny-quickgelu gpu=$GPU_DEVICE
    embed_run "$model" embed-cpu cpu
    embed_run "$model" embed-cuda-f32 "$gpu" WISE_COMPUTE_DTYPE=f32
    # Without the fused CUDA kernels too: a failure in one and not the other points at them.
    embed_run "$model" embed-cuda-f32-opbyop "$gpu" WISE_CUDA_FUSED=off WISE_COMPUTE_DTYPE=f32
    embed_run "$model" embed-cuda-bf16 "$gpu" WISE_COMPUTE_DTYPE=bf16
    # A GELU (erf) model too: its blocks take the other activation kernels.
    embed_run tests/fixtures/clip-tiny-gelu embed-gelu-cpu cpu
    embed_run tests/fixtures/clip-tiny-gelu embed-gelu-cuda-f32 "$gpu" WISE_COMPUTE_DTYPE=f32

    # Flash attention (bf16, 64-wide heads) runs on none of the fixtures (8-wide heads): the
    # same tiny CLIP with 64-wide heads (fresh HF weights, made here), bf16 with and
    # without it against the CPU in f32.
    local wide="$work/clip-tiny-d64"
    "$py" - "$model" "$wide" <<'PY'
import json, shutil, sys
import torch
from transformers import CLIPConfig, CLIPModel
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
config = json.load(open(f"{src}/config.json"))
for tower in ("vision_config", "text_config"):
    config[tower].update(hidden_size=128, intermediate_size=256, num_attention_heads=2)
torch.manual_seed(0)
CLIPModel(CLIPConfig(**config)).save_pretrained(dst, safe_serialization=True)
PY
    embed_run "$wide" embed-d64-cpu cpu
    embed_run "$wide" embed-d64-bf16 "$gpu" WISE_COMPUTE_DTYPE=bf16
    embed_run "$wide" embed-d64-bf16-noflash "$gpu" WISE_FLASH_ATTENTION=off WISE_COMPUTE_DTYPE=bf16

    echo "== parity: 3 wise train steps, CPU vs CUDA"
    mkdir -p "$work/tiny/a" "$work/tiny/b"
    local i=0
    for f in tests/fixtures/images/*.{png,jpg}; do
        cp "$f" "$work/tiny/$([[ $((i % 2)) == 0 ]] && echo a || echo b)/"
        i=$((i + 1))
    done
    printf 'a\nb\n' > "$work/classes.txt"
    "$wise" zeroshot --model "$model" --classes "$work/classes.txt" --templates simple \
        --out "$work/zeroshot.safetensors"
    train_run zeroshot train-cpu cpu
    train_run zeroshot train-cuda-f32 "$gpu" WISE_COMPUTE_DTYPE=f32
    train_run zeroshot train-cuda-f32-opbyop "$gpu" WISE_CUDA_FUSED=off WISE_COMPUTE_DTYPE=f32
    train_run zeroshot train-cuda-bf16 "$gpu" WISE_COMPUTE_DTYPE=bf16
    # The 64-wide heads, with and without flash attention (its backward).
    "$wise" zeroshot --model "$wide" --classes "$work/classes.txt" --templates simple \
        --out "$work/zeroshot-d64.safetensors"
    train_run zeroshot-d64 train-d64-cpu cpu
    train_run zeroshot-d64 train-d64-bf16 "$gpu" WISE_COMPUTE_DTYPE=bf16
    train_run zeroshot-d64 train-d64-bf16-noflash "$gpu" WISE_FLASH_ATTENTION=off WISE_COMPUTE_DTYPE=bf16

    "$py" - "$work" "$out/parity.jsonl" <<'PY'
import json, sys
import torch
from safetensors.torch import load_file
work, out = sys.argv[1], sys.argv[2]

def embed_diff(ref, cand):
    """Worst tensor's max |a-b| / max |a|."""
    a, b = load_file(f"{work}/{ref}"), load_file(f"{work}/{cand}")
    worst = max((((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max()).item(), k)
                for k in a if a[k].is_floating_point())
    return {"max_rel_diff": worst[0], "worst_tensor": worst[1]}

def update_diff(ref, cand, start="zeroshot.safetensors"):
    """Training moves the weights by d = theta - theta0 (theta0: `start`): |d_cand - d_ref| /
    |d_ref| over all tensors, and the cosine of the two updates. (Per tensor would be
    meaningless: Adam's first steps are +-lr wherever a gradient is nonzero, even rounding
    noise.)"""
    t0 = load_file(f"{work}/{start}")
    a, b = load_file(f"{work}/{ref}"), load_file(f"{work}/{cand}")
    da = torch.cat([(a[k].double() - t0[k].double()).flatten() for k in sorted(t0)])
    db = torch.cat([(b[k].double() - t0[k].double()).flatten() for k in sorted(t0)])
    return {"update_rel_diff": ((da - db).norm() / da.norm()).item(),
            "update_cosine": (da @ db / (da.norm() * db.norm())).item()}

def d64_update_diff(ref, cand):
    return update_diff(ref, cand, "zeroshot-d64.safetensors")

# f32 on the GPU must agree with the CPU to rounding: features to 1e-4. Training updates
# get 1e-2: Adam's first steps move every weight by about lr * g/|g|, so gradients at the
# level of rounding noise (k_proj.bias's is zero in exact math) come out as full-size
# steps of either sign; an H100 gave 4.0e-3 with cosine 0.99999 (2026-11-27). bf16 keeps
# ~3 significant digits per op, so it gets loose bounds.
checks = [
    ("embed-cpu.safetensors", "embed-cuda-f32.safetensors", embed_diff, "max_rel_diff", 1e-4),
    ("embed-cpu.safetensors", "embed-cuda-f32-opbyop.safetensors", embed_diff, "max_rel_diff", 1e-4),
    ("embed-cpu.safetensors", "embed-cuda-bf16.safetensors", embed_diff, "max_rel_diff", 5e-2),
    ("embed-gelu-cpu.safetensors", "embed-gelu-cuda-f32.safetensors", embed_diff, "max_rel_diff", 1e-4),
    ("train-cpu/finetuned.safetensors", "train-cuda-f32/finetuned.safetensors", update_diff,
     "update_rel_diff", 1e-2),
    ("train-cpu/finetuned.safetensors", "train-cuda-f32-opbyop/finetuned.safetensors", update_diff,
     "update_rel_diff", 1e-2),
    ("train-cpu/finetuned.safetensors", "train-cuda-bf16/finetuned.safetensors", update_diff,
     "update_rel_diff", 0.3),
    # 64-wide heads: bf16 with flash attention, and without (a failure in one only points at it).
    ("embed-d64-cpu.safetensors", "embed-d64-bf16.safetensors", embed_diff, "max_rel_diff", 5e-2),
    ("embed-d64-cpu.safetensors", "embed-d64-bf16-noflash.safetensors", embed_diff, "max_rel_diff", 5e-2),
    ("train-d64-cpu/finetuned.safetensors", "train-d64-bf16/finetuned.safetensors", d64_update_diff,
     "update_rel_diff", 0.3),
    ("train-d64-cpu/finetuned.safetensors", "train-d64-bf16-noflash/finetuned.safetensors",
     d64_update_diff, "update_rel_diff", 0.3),
]
failed = 0
with open(out, "w") as f:
    for ref, cand, measure, key, tol in checks:
        row = {"reference": ref, "candidate": cand, **measure(ref, cand), "tolerance": tol}
        row["ok"] = row[key] <= tol
        failed += not row["ok"]
        f.write(json.dumps(row) + "\n")
        print(("ok  " if row["ok"] else "FAIL"), json.dumps(row))
sys.exit(1 if failed else 0)
PY

}

# wise bench against PyTorch AMP bf16, one after the other on the same GPU.
benchmarks() {
    local wise=$1 py=$2 out=$3
    echo "== throughput: wise bench vs PyTorch AMP bf16 (HF transformers), same run"
    : > "$out/bench.jsonl"
    local preset mode batch
    for preset in ViT-B/32 ViT-B/16; do
        for mode in infer train; do
            batch=$([[ $mode == infer ]] && echo "${INFER_BATCH:-256}" || echo "${TRAIN_BATCH:-128}")
            "$py" scripts/bench_torch.py --impl hf --device "$GPU_DEVICE" --amp bf16 --mode "$mode" \
                --preset "$preset" --batch-size "$batch" --warmup 3 --iters "${ITERS:-10}" \
                2> >(grep -v "No pretrained" >&2) | tee -a "$out/bench.jsonl" || echo "PyTorch $preset $mode failed"
            # Flash attention has not yet run on a GPU: if the build as it is fails, the same
            # benchmark without it still gives this run its figures (tagged with the variant).
            "$wise" bench --device "$GPU_DEVICE" --mode "$mode" --preset "$preset" --batch-size "$batch" \
                --warmup 3 --iters "${ITERS:-10}" | tee -a "$out/bench.jsonl" \
                || { echo "wise $preset $mode failed; again with WISE_FLASH_ATTENTION=off"
                     WISE_FLASH_ATTENTION=off "$wise" bench --device "$GPU_DEVICE" --mode "$mode" --preset "$preset" \
                         --batch-size "$batch" --warmup 3 --iters "${ITERS:-10}" \
                         | sed 's/^{/{"variant":"flash=off",/' | tee -a "$out/bench.jsonl" \
                         || echo "wise $preset $mode failed without flash attention too"; }
        done
    done

    echo "== where wise's GPU time goes (WISE_PROFILE=1: every part waits for the GPU), as built,"
    echo "   and without one change each: the fused CUDA kernels and the one-node block"
    echo "   (WISE_CUDA_FUSED=off), the memory pool and event settings (WISE_CUDA_ALLOCATOR=candle),"
    echo "   the attention's padding to aligned rows (WISE_ATTENTION_PADDING=off), flash attention"
    echo "   (WISE_FLASH_ATTENTION=off)"
    : > "$out/profile.jsonl"
    local variant setting
    for variant in ${PROFILE_VARIANTS:-default flash=off fused=off allocator=candle padding=off}; do
        case $variant in
            fused=off) setting=WISE_CUDA_FUSED=off ;;
            allocator=candle) setting=WISE_CUDA_ALLOCATOR=candle ;;
            padding=off) setting=WISE_ATTENTION_PADDING=off ;;
            flash=off) setting=WISE_FLASH_ATTENTION=off ;;
            *) setting=WISE_PROFILE=1 ;;
        esac
        for mode in infer train; do
            batch=$([[ $mode == infer ]] && echo "${INFER_BATCH:-256}" || echo "${TRAIN_BATCH:-128}")
            env "$setting" WISE_PROFILE=1 "$wise" bench \
                --device "$GPU_DEVICE" --mode "$mode" --preset ViT-B/16 --batch-size "$batch" \
                --warmup 2 --iters 3 \
                | sed "s/^{/{\"variant\":\"$variant\",/" | tee -a "$out/profile.jsonl" \
                || echo "wise profile $mode ($variant) failed"
        done
    done

    "$py" - "$out/bench.jsonl" "$out/summary.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
PEAK = 989e12  # H100 SXM dense bf16

lines = ["| model | mode | batch | PyTorch img/s | wise img/s | wise / PyTorch | wise MFU | PyTorch MFU |",
         "|---|---|---|---|---|---|---|---|"]
for preset in ("ViT-B/32", "ViT-B/16"):
    for mode in ("infer", "train"):
        got = {r["impl"]: r for r in rows if r["preset"] == preset and r["mode"] == mode}
        if "wise" not in got or "hf" not in got:
            continue
        w, t = got["wise"], got["hf"]
        # The model's FLOPs per image as `wise bench` counts them (VisionConfig::forward_flops;
        # a training step three times the forward, head included).
        flops = w["model_gflop_per_img"] * 1e9
        mfu = lambda r: f"{100 * r['img_per_s'] * flops / PEAK:.1f}%"
        tag = f" ({w['variant']})" if "variant" in w else ""
        lines.append(f"| {preset} | {mode} | {w['batch_size']} | {t['img_per_s']:.1f} | {w['img_per_s']:.1f}{tag} "
                     f"| {w['img_per_s'] / t['img_per_s']:.2f}x | {mfu(w)} | {mfu(t)} |")
# Memory of the training steps: what `wise train`'s check counts as the least a step keeps
# (memory_estimate_gb) must not exceed what the pool held (device_peak_gb).
memory = ["", "| model | batch | wise: at least (check) | wise: peak | PyTorch: peak | at least / peak |",
          "|---|---|---|---|---|---|"]
for preset in ("ViT-B/32", "ViT-B/16"):
    got = {r["impl"]: r for r in rows if r["preset"] == preset and r["mode"] == "train"}
    w, t = got.get("wise", {}), got.get("hf", {})
    if "device_peak_gb" not in w:
        continue
    ratio = w["memory_estimate_gb"] / w["device_peak_gb"]
    print(f"memory check {preset}: {'ok' if ratio <= 1 else 'FAIL'} (at least {w['memory_estimate_gb']} GB, "
          f"peak {w['device_peak_gb']} GB)")
    memory.append(f"| {preset} | {w['batch_size']} | {w['memory_estimate_gb']} GB | {w['device_peak_gb']} GB "
                  f"| {t.get('device_peak_gb', '–')} GB | {ratio:.2f} |")
text = "\n".join(lines + (memory if len(memory) > 3 else []))
print(text)
open(sys.argv[2], "w").write(text + "\n")
PY
}

# The host's data path: decoding and preprocessing the carried photo-sized JPEGs on all of
# the GPU machine's cores and on one, against the GPU's inference rate in bench.jsonl.
data_path() {
    local wise=$1 py=$2 out=$3
    [[ -d .gpu/photos ]] || { echo "== data path: no .gpu/photos, skipped"; return 0; }
    echo "== data path on the host CPU: decode + resize + normalise of photo-sized JPEGs"
    : > "$out/data-path.jsonl"
    # With SMT, also one thread per physical core: is rayon's default (a thread per logical
    # CPU) the right size for the data path?
    local threads per_core all physical
    per_core=$(lscpu | awk -F': *' '/^Thread\(s\) per core/{print $2}')
    all=$(nproc)
    physical=$((all / ${per_core:-1}))
    for threads in "$all" $( ((physical < all)) && echo "$physical" || true) 1; do
        RAYON_NUM_THREADS=$threads "$wise" bench --mode preprocess --data .gpu/photos --warmup 1 --iters 5 \
            | tee -a "$out/data-path.jsonl" || echo "wise preprocess ($threads threads) failed"
    done
    echo "== data path: ViT-B/16 training steps on the GPU fed from the photos vs on random pixels"
    # 256 photos are 4 batches of 64 an epoch: each epoch's first batch waits for a fresh
    # start of the loader (wise) or of the workers' first batches (PyTorch), as in any run.
    local classes train=(--mode train --preset ViT-B/16 --batch-size "${DATA_TRAIN_BATCH:-64}" --warmup 3
                         --iters "${ITERS:-8}")
    classes=$(find .gpu/photos -mindepth 1 -maxdepth 1 -type d | wc -l)
    "$wise" bench --device "$GPU_DEVICE" "${train[@]}" --classes "$classes" \
        | sed 's/"mode":"train"/"mode":"train-random"/' | tee -a "$out/data-path.jsonl" || echo "wise train failed"
    "$wise" bench --device "$GPU_DEVICE" "${train[@]}" --data .gpu/photos | tee -a "$out/data-path.jsonl" \
        || echo "wise train on the photos failed"
    # The main thread launches the GPU's work while rayon's threads, one per core, decode:
    # does leaving it a core of its own help?
    RAYON_NUM_THREADS=$((all - 1)) "$wise" bench --device "$GPU_DEVICE" "${train[@]}" --data .gpu/photos \
        | sed 's/^{/{"variant":"one core left to the main thread",/' | tee -a "$out/data-path.jsonl" \
        || echo "wise train on the photos (a core left free) failed"
    "$py" scripts/bench_torch.py --impl hf --device "$GPU_DEVICE" --amp bf16 "${train[@]}" --classes "$classes" \
        2> >(grep -v "No pretrained" >&2) | sed 's/"mode": "train"/"mode": "train-random"/' \
        | tee -a "$out/data-path.jsonl" || echo "PyTorch train failed"
    "$py" scripts/bench_torch.py --impl hf --device "$GPU_DEVICE" --amp bf16 "${train[@]}" --data .gpu/photos \
        --workers "$all" 2> >(grep -v "No pretrained" >&2) | tee -a "$out/data-path.jsonl" \
        || echo "PyTorch train on the photos failed"
    "$py" - "$out/data-path.jsonl" "$out/summary.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
rate = {(r["impl"], r["mode"], r.get("variant", "")): r["img_per_s"] for r in rows if r["mode"].startswith("train")}
lines = ["", "| ViT-B/16 training steps (data path) | img/s | vs random pixels |", "|---|---|---|"]
for (impl, mode, variant), r in sorted(rate.items()):
    base = rate.get((impl, "train-random", ""))
    what = f"{impl}, {'random pixels' if mode == 'train-random' else 'fed from the photos'}"
    lines.append(f"| {what}{f' ({variant})' if variant else ''} | {r:.1f} | "
                 f"{f'{r / base:.2f}x' if base and mode == 'train' else '-'} |")
if ("wise", "train", "") in rate and ("hf", "train", "") in rate:
    lines.append(f"| wise / PyTorch, both fed from the photos | | {rate[('wise', 'train', '')] / rate[('hf', 'train', '')]:.2f}x |")
text = "\n".join(lines)
print(text)
open(sys.argv[2], "a").write(text + "\n")
PY
}

# A real out-of-memory error must reach the user with the advice `wise train` adds (a
# smaller --batch-size and a larger --grad-accum): its match on the error's text has only
# been tested on CUDA's and cuBLAS's names for it, never on a GPU.
out_of_memory() {
    local wise=$1 text
    [[ $GPU_DEVICE != cpu ]] || { echo "== memory check and out-of-memory advice: skipped on CPU"; return 0; }
    local run=("$wise" bench --device "$GPU_DEVICE" --mode train --preset ViT-L/14
               --batch-size "${OOM_BATCH:-4096}" --warmup 0 --iters 1)
    echo "== memory: a ViT-L/14 training step at batch ${OOM_BATCH:-4096} is refused before it starts"
    text=$("${run[@]}" 2>&1 || true)
    tail -n 3 <<<"$text"
    if grep -q "needs at least .* images a batch fit" <<<"$text"; then
        echo "ok   memory check before the first step"
    else
        echo "FAIL memory check before the first step: no refusal in the output above"
    fi
    echo "== the same step run anyway (WISE_MEMORY_CHECK=off) must fail with the out-of-memory advice"
    text=$(WISE_MEMORY_CHECK=off "${run[@]}" 2>&1 || true)
    tail -n 3 <<<"$text"
    if grep -q "ran out of memory at" <<<"$text"; then
        echo "ok   out-of-memory advice"
    else
        echo "FAIL out-of-memory advice: none in the output above"
    fi
}

host_cpu() {
    local wise=$1 py=$2 out=$3
    grep -qwE 'avx512f|avx2' /proc/cpuinfo || { echo "== host CPU: no AVX-512 or AVX2, skipped"; return 0; }
    : > "$out/host-cpu.jsonl"
    # wise's f32 kernel from packed weights against the BLAS, on ViT-B/32's block products
    # at batch 1 and 32 (`packed …` against the plain shapes in one line each; the line's
    # f32_kernel says which form), and end to end one image at a time.
    echo "== host CPU: f32 products, BLAS and wise's packed kernel"
    local bs kernel
    for bs in 1 32; do
        "$wise" bench --device cpu --mode sgemm --batch-size "$bs" --warmup 1 --iters 5 \
            | tee -a "$out/host-cpu.jsonl" || echo "wise host CPU sgemm (batch $bs) failed"
    done
    if grep -qw avx512f /proc/cpuinfo; then
        WISE_F32_KERNEL=avx2 "$wise" bench --device cpu --mode sgemm --batch-size 1 --warmup 1 --iters 5 \
            | tee -a "$out/host-cpu.jsonl" || echo "wise host CPU sgemm (AVX2 form) failed"
    fi
    for kernel in "" off; do
        WISE_F32_KERNEL=$kernel "$wise" bench --device cpu --mode infer --batch-size 1 --warmup 3 --iters 20 \
            | tee -a "$out/host-cpu.jsonl" || echo "wise host CPU inference (kernel '$kernel') failed"
    done
    grep -qw avx512_bf16 /proc/cpuinfo || { echo "== host CPU: no AVX512_BF16, bf16 skipped"; return 0; }
    echo "== host CPU: ViT-B/32 inference, batch 32, f32 and bf16 (wise; PyTorch HF, autocast)"
    local bf16
    for bf16 in 0 1; do
        WISE_CPU_BF16=$bf16 "$wise" bench --device cpu --mode infer --batch-size 32 --warmup 1 --iters 3 \
            | tee -a "$out/host-cpu.jsonl" || echo "wise host CPU (WISE_CPU_BF16=$bf16) failed"
    done
    local amp
    for amp in none bf16; do
        "$py" scripts/bench_torch.py --impl hf --device cpu --amp "$amp" --mode infer --batch-size 32 \
            --warmup 1 --iters 3 2> >(grep -v "No pretrained" >&2) | tee -a "$out/host-cpu.jsonl" \
            || echo "PyTorch host CPU (amp $amp) failed"
    done
    # With SMT, f32 again on one thread per physical core, both sides (PyTorch's own default;
    # wise's rayon takes a thread per logical CPU): which size suits the products?
    local per_core physical
    per_core=$(lscpu | awk -F': *' '/^Thread\(s\) per core/{print $2}')
    physical=$(($(nproc) / ${per_core:-1}))
    if ((physical < $(nproc))); then
        RAYON_NUM_THREADS=$physical "$wise" bench --device cpu --mode infer --batch-size 32 --warmup 1 \
            --iters 3 | tee -a "$out/host-cpu.jsonl" || echo "wise host CPU ($physical threads) failed"
        "$py" scripts/bench_torch.py --impl hf --device cpu --threads "$physical" --mode infer \
            --batch-size 32 --warmup 1 --iters 3 2> >(grep -v "No pretrained" >&2) \
            | tee -a "$out/host-cpu.jsonl" || echo "PyTorch host CPU ($physical threads) failed"
    fi
}

case "${1:-}" in
    build) build ;;
    device) shift; device "$@" ;;
    *) sed -n '2,/^set -euo pipefail/{/^set/!p}' "$0"; exit 2 ;;
esac
