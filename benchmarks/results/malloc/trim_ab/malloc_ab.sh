#!/bin/bash
# A/B: the actors' glibc trim threshold (A: 256 MiB, today's default; B: never trim), 123M x 8 prompts,
# shared layout, serial loop, 5 iterations (the first left out), order A B B A; the machine's
# user/nice/sys ticks for each invocation from /proc/stat.
cd /tmp/cc25
mkdir -p /tmp/mab
for step in 1:A 2:B 3:B 4:A; do
  i=${step%%:*}; v=${step##*:}
  before=$(head -1 /proc/stat)
  if [ "$v" = B ]; then export MALLOC_TRIM_THRESHOLD_=68719476736; else unset MALLOC_TRIM_THRESHOLD_; fi
  t0=$(date +%s)
  .venv/bin/python benchmarks/scaling.py --sizes 125m --prompts 8 --layouts shared --modes serial --iterations 5 \
      --raw-repeats 0 --out /tmp/mab/${i}_$v > /tmp/mab/${i}_$v.log 2>&1
  after=$(head -1 /proc/stat)
  echo "$i $v wall $(( $(date +%s) - t0 )) s | before $before | after $after" >> /tmp/mab/ticks.txt
done
