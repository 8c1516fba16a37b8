# bg.sh: this lease's whole GPU pipeline, started under setsid so it outlives the call that starts it.
# Runs from a private copy of the tree (/tmp/repo); every phase is bounded; results land in /tmp/res
# (phases.txt says what finished), and collect.sh copies them back call by call.
set -u
cd /tmp/repo
R=/tmp/res; mkdir -p $R /tmp/sweeps
export PYTHONPATH=src:tests PYTHONUNBUFFERED=1
phase() { echo "$(date +%s) $*" >> $R/phases.txt; }
phase start
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
sweep d31-schemes 900 --config configs/depth-schemes-31m.yaml --variants mesh,linear,diagonal
sweep d31-random 800 --config configs/depth-random-31m.yaml --variants anchor,mesh,linear
sweep s31-250M-m2 450 --config configs/scaling-31m.yaml --max-tokens 250000000 --variants mesh --seeds 2 --parallel 1
sweep d31-linear-slow 300 --config configs/linear-slow-31m.yaml --variants linear-slow
sweep s31-250M-a2 450 --config configs/scaling-31m.yaml --max-tokens 250000000 --variants anchor --seeds 2 --parallel 1
phase all
