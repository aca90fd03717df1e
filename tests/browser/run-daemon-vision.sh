#!/usr/bin/env bash
# The browser's image test against the real daemon serving a model that reads
# images: the tiny transformers Gemma3ForConditionalGeneration fixture widened
# to the real vocabulary (scripts/fixtures/make_vision_chat_model.py), the
# real tokenizer, on the CPU. The answer is noise (random weights); the test
# checks that an attached image goes through the page, the daemon's decoder,
# the vision tower and the image prefill, and comes back as a finished turn.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../e2e/daemon.sh"
model_dir="$(mktemp -d "${TMPDIR:-/tmp}/medgemma-vision-model.XXXXXX")"
python3 "$here/../../scripts/fixtures/make_vision_chat_model.py" --out "$model_dir"
chmod -R a+rX "$model_dir"
export E2E_MODEL="$model_dir" E2E_LABEL="Tiny vision fixture"
e2e_start 4 8
trap 'e2e_stop; rm -rf "$model_dir"' EXIT
echo "browser: medgemmad (vision fixture) ready behind $E2E_URL" >&2
status=0
"$here/run.sh" --base-url "$E2E_URL" -k an_image_question_is_answered "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "browser: daemon log:" >&2
  cat "$E2E_DIR/daemon.log" >&2
fi
exit "$status"
