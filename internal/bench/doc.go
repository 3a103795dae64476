// Package bench measures wxpush on this machine and prints the figures (make
// bench). It is a benchmark, not a test: it asserts nothing about speed. Every
// figure comes from one run on one machine, against a private redis-server and
// the simulator, over real HTTP; compare ratios within a run, never across runs.
package bench
