// Package qos holds edgemq's delivery guarantees with no network code: the
// message model and its record encoding, inflight windows, per-session queues
// and their bounds, overflow policies and admission decisions.
//
// (Work in progress: see issue 4.)
package qos
