// Command ambitctl is Ambit's CLI. `ambitctl local` runs a whole mesh on
// one Linux machine (see package ctl/local): up, status, exec, apply,
// delete, down.
package main
