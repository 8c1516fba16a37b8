# collect.sh PHASE MAXWAIT: copy /tmp/res back (every 20 s, so a call cut short still returns it) until
# phases.txt names PHASE or MAXWAIT seconds pass; snapshot the sweep in progress; print progress
set -u
t0=$(date +%s)
sync_out() {
  cp -u /tmp/res/* $OUT/ 2>/dev/null
  cur=$(ls -td /tmp/sweeps/*/ 2>/dev/null | head -1)
  [ -n "$cur" ] && tar -C /tmp/sweeps --exclude='*/model/*.safetensors' --exclude='*/model/tokenizer.json' \
    --exclude='*/checkpoints' --exclude='*/tb' -czf $OUT/live-$(basename $cur).tar.gz $(basename $cur) 2>/dev/null
}
while :; do
  sync_out
  grep -q " $1" /tmp/res/phases.txt 2>/dev/null && break
  [ $(( $(date +%s) - t0 )) -ge $2 ] && break
  sleep 20
done
sync_out
echo "after $(( $(date +%s) - t0 )) s:"; cat /tmp/res/phases.txt
for f in /tmp/res/*.log; do echo "== $f"; grep -v "step/s\|Writing\|Loading" $f | tail -6; done
pgrep -af "meshlm|bench" | cut -c1-150 | head
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
