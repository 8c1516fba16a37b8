# bg.sh: this lease's whole GPU pipeline, started under setsid so it outlives the call that starts it.
# Runs from a private copy of the tree (/tmp/repo); every phase is bounded; results land in /tmp/res
# (phases.txt says what finished), and collect.sh copies them back call by call.
set -u
cd /tmp/repo
R=/tmp/res; mkdir -p $R /tmp/sweeps
export PYTHONPATH=src:tests PYTHONUNBUFFERED=1
phase() { echo "$(date +%s) $*" >> $R/phases.txt; }
phase start
GEN_LIMIT=40 timeout 240 bash .gpu/gen.sh > $R/gen.log 2>&1
phase gen rc=$?
timeout 240 python bench/multi_gpu.py --variants 4+8R2+4:mesh --checkpointing selective --steps 5 --warmup 2 \
  --json $R/ac-1.4b-selective.json > $R/ac-selective.log 2>&1
phase ac rc=$?
for _ in $(seq 300); do [ -d /tmp/corpus ] && [ -d /tmp/prose ] && break; sleep 2; done
phase corpus $(ls /tmp/corpus | tr '\n' ' ')
sweep() {
  name=$1; limit=$2; shift 2
  phase $name start
  timeout -s TERM $limit python -m meshlm.cli compare --data /tmp/corpus --out /tmp/sweeps/$name \
    --eval-tokens 2000000 --eval prose=/tmp/prose "$@" > $R/$name.log 2>&1
  rc=$?
  snap $name
  phase $name rc=$rc
}
snap() {
  tar -C /tmp/sweeps --exclude='*/model/*.safetensors' --exclude='*/model/tokenizer.json' --exclude='*/checkpoints' \
    --exclude='*/tb' -czf $R/$1.tar.gz.tmp $1 && mv $R/$1.tar.gz.tmp $R/$1.tar.gz
}
sweep d31-schemes 570 --config configs/depth-schemes-31m.yaml
sweep d31-random 570 --config configs/depth-random-31m.yaml
sweep s31-250M-s2 700 --config configs/scaling-31m.yaml --max-tokens 250000000 --variants mesh,anchor --seeds 2 --parallel 1
phase all
