// Command ambitctl is Ambit's CLI, on cobra. `ambitctl local` runs a whole
// mesh on one Linux machine (see package ctl/local): up, status, exec,
// apply, delete, stop, start, down. The cluster commands (install,
// upgrade, uninstall, enroll, unenroll, precheck, version, ztunnel-config,
// proxy-status) take kubectl's kubeconfig and context flags; the
// inspection commands take --local to read the local mesh instead.
//
// Exit codes: 0 success, 1 the command failed, 2 a wrong command line,
// 3 `local status` of an unhealthy mesh or a precheck with a FAIL; `local
// exec` exits with the command's code.
package main
