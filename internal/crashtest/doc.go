// Package crashtest is autosnap's crash matrix. It holds tests only, built with
// -tags crashtest and run by `make crashtest` (after `make test`, alone, because some
// scenarios restart libvirtd).
//
// Each scenario sets up a real throwaway libvirt domain (internal/testbed), writes
// distinct data per snapshot generation, runs a binary built with -tags crashtest so that
// it stops at one crash point of internal/crash, interrupts it there (SIGKILL, or a
// libvirtd restart while it waits at the point), runs the ordinary next command with the
// shipped binary and then checks that everything is whole again: the command's exit
// status, every kept snapshot's data byte for byte over the written regions, the
// guest's current data, the guest neither frozen nor paused, libvirt's metadata against
// the image files on disk, chain depth, no block job and no journal record left over.
// The test log ends with the matrix: one row per scenario, repaired or failed and why.
//
// Nothing in it skips: the scenarios that restart libvirtd always run (a restart
// disconnects every libvirt client on the machine; a developer sharing it selects the
// kill rows alone with -run TestCrashMatrix/kill). docs/crashtest.md lists the scenarios and how each is forced.
package crashtest
