package naming

// Names carry timestamps in a time zone (TZ, or the host's): embed the zone database
// so a host or container without /usr/share/zoneinfo reads and writes them the same.
import _ "time/tzdata"
