# study.sh NAME MAX_TOKENS [extra compare flags]: run (or resume) one budget of the scaling sweep, bring back its report
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
name=$1; budget=$2; shift 2
mkdir -p /tmp/sweeps
evals=""; [ -d /tmp/prose ] && evals="--eval prose=/tmp/prose"
t0=$(date +%s)
timeout -s TERM ${STUDY_LIMIT:-520} python -m meshlm.cli compare --config configs/scaling-31m.yaml --data /tmp/corpus \
  --max-tokens $budget --out /tmp/sweeps/$name --eval-tokens 2000000 $evals "$@" > /tmp/sweeps/$name.log 2>&1
rc=$?
echo "compare rc=$rc after $(( $(date +%s) - t0 )) s"
tail -25 /tmp/sweeps/$name.log
cp /tmp/sweeps/$name.log $OUT/
tar -C /tmp/sweeps --exclude='*/model/*.safetensors' --exclude='*/model/tokenizer.json' --exclude='*/checkpoints' -czf $OUT/$name.tar.gz $name
nvidia-smi --query-gpu=memory.used --format=csv
cat /tmp/sweeps/$name/report.md 2>/dev/null | head -40
