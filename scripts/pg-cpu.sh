#!/usr/bin/env bash
# PostgreSQL's CPU by backend over a window, for telling the command
# writer's backend from the read side's: run it beside a load (make bench, a
# billing-load run) and it prints each backend's CPU in ms, with what it last
# ran, busiest first, and how much of it was spent in the kernel.
#
#   scripts/pg-cpu.sh postgres://postgres@127.0.0.1:55532/billing 10
set -euo pipefail
db=$1
seconds=${2:-10}
tick=$(getconf CLK_TCK)
snapshot() {
  psql "$db" -qAt -F $'\t' -c "SELECT pid, coalesce(nullif(application_name, ''), backend_type),
                                      left(regexp_replace(query, '\\s+', ' ', 'g'), 60)
                               FROM pg_stat_activity WHERE pid <> pg_backend_pid()" |
    while IFS=$'\t' read -r pid name query; do
      # utime and stime: fields 14 and 15 of /proc/PID/stat (the command
      # name, field 2, holds no spaces for a PostgreSQL backend).
      [ -r "/proc/$pid/stat" ] || continue
      read -r -a stat < "/proc/$pid/stat"
      printf '%s\t%s\t%s\t%s\t%s\n' "$pid" "${stat[13]}" "${stat[14]}" "$name" "$query"
    done
}
before=$(snapshot)
sleep "$seconds"
after=$(snapshot)
python3 - "$tick" "$seconds" <(echo "$before") <(echo "$after") <<'PY'
import sys
tick, seconds = int(sys.argv[1]), float(sys.argv[2])
def load(path):
    rows = {}
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 5:
            rows[parts[0]] = (int(parts[1]), int(parts[2]), parts[3], parts[4])
    return rows
before, after = load(sys.argv[3]), load(sys.argv[4])
rows = []
for pid, (user, system, name, query) in after.items():
    if pid in before:
        user = (user - before[pid][0]) * 1000 / tick
        system = (system - before[pid][1]) * 1000 / tick
        rows.append((user + system, system, pid, name, query))
total = sum(r[0] for r in rows)
print(f"PostgreSQL backends over {seconds:.0f} s: {total:.0f} ms CPU in all (ms, of it in the kernel)")
for ms, system, pid, name, query in sorted(rows, reverse=True):
    if ms > 0:
        print(f"{ms:8.0f} ms {system:6.0f} {ms / seconds / 10:5.1f}% core  {pid:>7}  {name[:20]:20}  {query}")
PY
