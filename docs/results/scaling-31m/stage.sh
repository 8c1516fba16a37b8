# stage.sh CHUNK...: add chunks of the carried pack to /tmp/corpus (meshlm data unpack), then run the rest of the command line
set -eu
export PYTHONPATH=src PYTHONUNBUFFERED=1
for c in "$@"; do python -m meshlm.cli data unpack "$c" --manifest .gpu/pack/pack.json --out /tmp/corpus; done
ls /tmp/ | head; df -h /tmp | tail -1
