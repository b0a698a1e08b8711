#!/bin/bash
# The runs of BENCHMARKS.md, one benchmark at a time on an otherwise idle
# machine: scripts/benchmarks.sh idle|cfidle|fanout|cffanout|publish|handshake|resume.
# Loopback only; every run is bounded by its --duration/--n.
KH=${KH:-/tmp/kh}   # go build -o /tmp/kh ./cmd/knowledgehub
mkdir -p /tmp/bm
FLAGS="--connect-rate-per-ip 0 --connect-rate-per-user 0 --max-connections-per-ip 0 --max-connections-per-user 0 --log-level warn"
start_kh() { pkill -f "kh serve" ; sleep 0.5; rm -rf /tmp/bm/data; $KH serve --addr 127.0.0.1:3000 --data-dir /tmp/bm/data $FLAGS "$@" > /tmp/bm/serve.log 2>&1 & sleep 1.5; }
start_cf() { pkill -f centrifugo; sleep 0.5; /tmp/centrifugo-bin/centrifugo -c "$(dirname "$0")"/centrifugo.json > /tmp/bm/cf.log 2>&1 & sleep 1.5; }
stop_all() { pkill -f "kh serve"; pkill -f centrifugo; sleep 0.5; }
B="$KH bench"
S="--server http://127.0.0.1:3000 --data-dir /tmp/bm/data"
case "$1" in
idle)
  for t in ws sse; do for auth in "" "--token-user user-%d"; do
    start_kh --store memory; echo "=== idle $t $auth"; $B idle $S --n 19000 --transport $t $auth --settle 5s; done; done ;;
cfidle)
  start_cf; echo "=== centrifugo idle ws"; $B idle --target centrifugo --server http://127.0.0.1:8000 --n 19000 --settle 5s ;;
fanout)
  for rate in 10 20 40; do start_kh --store memory; echo "=== fanout kh ws rate $rate"; $B fanout $S --n 10000 --transport ws --rate $rate --duration 10s; done
  for rate in 10 40; do start_kh --store memory; echo "=== fanout kh sse rate $rate"; $B fanout $S --n 10000 --transport sse --rate $rate --duration 10s; done
  start_kh --store memory --send-batching off; echo "=== fanout kh ws rate 10 send-batching off"; $B fanout $S --n 10000 --transport ws --rate 10 --duration 10s
  start_kh --store disk; echo "=== fanout kh ws rate 10 disk"; $B fanout $S --n 10000 --transport ws --rate 10 --duration 10s ;;
cffanout)
  for rate in 10 20 40; do start_cf; echo "=== fanout centrifugo ws rate $rate"; $B fanout --target centrifugo --server http://127.0.0.1:8000 --centrifugo-api-key APIKEY --n 10000 --rate $rate --duration 10s; done ;;
publish)
  start_kh --store disk; echo "=== publish disk c4 b100"; $B publish $S --concurrency 4 --batch 100 --duration 10s
  start_kh --store disk; echo "=== publish disk c256 b1"; $B publish $S --concurrency 256 --batch 1 --duration 10s ;;
handshake)
  start_kh --store memory; echo "=== handshake auth ws"; $B idle $S --n 19000 --transport ws --token-user user-%d --connect-concurrency 256 --settle 1s
  start_kh --store memory; echo "=== handshake auth sse"; $B idle $S --n 19000 --transport sse --token-user user-%d --connect-concurrency 256 --settle 1s ;;
resume)
  start_kh --store disk; echo "=== resume 5000 both"; $B resume $S --n 5000 --transport both --events 200 ;;
esac
stop_all
