// Package edge assembles the broker: mochi's MQTT engine, the TCP, TLS and
// WebSocket listeners, authentication and ACL, and the HTTP side.
//
// (Work in progress: see issue 2.)
package edge
