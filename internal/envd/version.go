// Package envd holds what other parts of Wrenn may know about the in-sandbox
// daemon without importing it: its protocol version. The daemon itself lives
// in the subpackages and is started by cmd/envd.
package envd

// Version is the envd protocol version this daemon implements. E2B's SDKs gate
// features on it (closeStdin needs 0.5.2, octet-stream uploads 0.5.7, file
// metadata 0.6.2, entries in watch events 0.6.3, watching network mounts
// 0.6.4), so the agent reports it as the sandbox's envdVersion.
const Version = "0.6.4"

// DefaultPort is the TCP port envd listens on inside every sandbox; the SDKs
// and the agent address envd there.
const DefaultPort = 49983
