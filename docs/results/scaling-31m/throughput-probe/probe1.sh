set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv
sha256sum .gpu/blob.bin | cut -c1-16
B="python bench/train_step.py --preset pythia-31m --micro-batch 32 --seq-len 1024 --warmup 5"
t0=$(date +%s)
$B --variants 12:base,2+4R2+2:mesh,2+4R2+2:anchor --steps 20 --json $OUT/eager.json 2>&1 | tail -6
t1=$(date +%s); echo "eager took $((t1-t0)) s"
$B --variants 12:base,2+4R2+2:mesh --steps 20 --compile --json $OUT/compiled.json 2>&1 | tail -5
t2=$(date +%s); echo "compiled took $((t2-t1)) s"
mkdir -p /tmp/p
for n in 4 8; do
  for i in $(seq 1 $n); do $B --variants 2+4R2+2:mesh --steps 80 --compile --json /tmp/p/par${n}_$i.json > /tmp/p/par${n}_$i.log 2>&1 & done
  sleep 70; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv; wait
  t3=$(date +%s); echo "par$n took $((t3-t2)) s"; t2=$t3
  tail -3 /tmp/p/par${n}_1.log
  python - <<PY | tee -a $OUT/par.txt
import json,glob
rows=[json.load(open(f))["rows"][0] for f in sorted(glob.glob("/tmp/p/par${n}_*.json"))]
print("n=$n", "per-proc tok/s", [round(r["tokens_per_s"]) for r in rows], "sum", round(sum(r["tokens_per_s"] for r in rows)), "mem", [r.get("peak_mem_gib", r.get("mem_gib")) for r in rows][:2], sorted(rows[0].keys()))
PY
done
