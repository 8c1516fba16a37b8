# gen.sh: meshlm generate on CUDA, each command bounded (GEN_LIMIT) and timed
set -u
export PYTHONPATH=src:tests PYTHONUNBUFFERED=1
python - <<'PY'
import torch
from fixtures.eval_tiny import tiny_pair
from meshlm import MeshLMConfig, MeshLMForCausalLM
neox, tok = tiny_pair()
neox.save_pretrained("/tmp/g/neox"); tok.save_pretrained("/tmp/g/neox")
torch.manual_seed(0)
cfg = MeshLMConfig(vocab_size=len(tok), hidden_size=64, num_attention_heads=4, layout="1+1R2+1", scheme="mesh", max_position_embeddings=128)
m = MeshLMForCausalLM(cfg).eval()
m.save_pretrained("/tmp/g/mesh"); tok.save_pretrained("/tmp/g/mesh")
PY
G="timeout ${GEN_LIMIT:-120} python -m meshlm.cli generate --max-new-tokens 24 --device cuda --prompt the"
for args in "neox" "neox --cache static" "mesh" "mesh --cache static" "mesh --num-loops 3" "mesh --num-loops 3 --cache static" \
            "mesh --temperature 0.9 --seed 1" "mesh --temperature 0.9 --seed 1" "mesh --temperature 0.9 --seed 2"; do
  set -- $args; d=$1; shift
  t0=$(date +%s.%N); echo "== $d $*"; $G /tmp/g/$d "$@" 2>&1 | grep -v "Writing\|Loading" | tail -3; echo "rc=${PIPESTATUS[0]} $(echo "$(date +%s.%N) - $t0" | bc) s"
done
