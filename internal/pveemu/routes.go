package pveemu

import "strings"

var routes []*route

func add(method, path string, params map[string]pspec, perm func(*reqCtx, map[string]string) *apiError,
	h func(*reqCtx) (any, *int, *apiError)) *route {
	var pattern, pathParams []string
	for _, s := range strings.Split(strings.Trim(path, "/"), "/") {
		pattern = append(pattern, s)
		if strings.HasPrefix(s, "{") {
			pathParams = append(pathParams, strings.Trim(s, "{}"))
		}
	}
	rt := &route{method: method, pattern: pattern, params: withPath(params, pathParams...), perm: perm, h: h}
	routes = append(routes, rt)
	return rt
}

// agentPerm: VM.GuestAgent.* on PVE ≥ 9, VM.Monitor before (§6.2).
func agentPerm(rc *reqCtx, pp map[string]string) *apiError {
	if rc.c.atLeast(9, 0, 0) {
		return requirePriv("/vms/{vmid}", "VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted")(rc, pp)
	}
	return requirePriv("/vms/{vmid}", "VM.Monitor")(rc, pp)
}

func init() {
	login := add("POST", "/access/ticket", map[string]pspec{
		"username":      {typ: "string", maxLen: 64},
		"password":      {typ: "string"},
		"realm":         {typ: "string", opt: true, format: "pve-realm", maxLen: 32},
		"otp":           specStrOpt,
		"tfa-challenge": specStrOpt,
		"path":          {typ: "string", opt: true, maxLen: 64},
		"privs":         {typ: "string", opt: true, maxLen: 64},
		"new-format":    specBoolOpt,
	}, nil, hLogin)
	login.noAuth, login.noToken = true, true
	dummy := add("GET", "/access/ticket", nil, nil, func(*reqCtx) (any, *int, *apiError) { return nil, nil, nil })
	dummy.noAuth = true

	add("GET", "/version", nil, nil, hVersion)
	add("GET", "/cluster/resources", map[string]pspec{
		"type": {typ: "string", opt: true, enum: []string{"vm", "storage", "node", "sdn"}},
	}, nil, hResources)
	add("GET", "/cluster/status", nil, requirePriv("/", "Sys.Audit"), hClusterStatus)
	add("GET", "/cluster/tasks", map[string]pspec{"max": {typ: "integer", opt: true}}, nil, hClusterTasks)
	add("GET", "/pools", map[string]pspec{
		"poolid": {typ: "string", opt: true, format: "pve-poolid"},
		"type":   {typ: "string", opt: true, enum: []string{"qemu", "lxc", "storage"}},
	}, nil, hPools)
	add("GET", "/pools/{poolid}", map[string]pspec{
		"type": {typ: "string", opt: true, enum: []string{"qemu", "lxc", "storage"}},
	}, requirePriv("/pool/{poolid}", "Pool.Audit"), hPool)

	add("GET", "/nodes", nil, nil, hNodes)
	add("GET", "/nodes/{node}", nil, nil, hNodeIndex)
	add("GET", "/nodes/{node}/status", nil, nil, hNodeStatus)
	add("GET", "/nodes/{node}/storage", map[string]pspec{
		"storage": {typ: "string", opt: true, format: "pve-storage-id"},
		"content": specStrOpt,
		"enabled": specBoolOpt,
		"target":  {typ: "string", opt: true, format: "pve-node"},
		"format":  specBoolOpt,
	}, nil, hStorageList)
	add("GET", "/nodes/{node}/storage/{storage}/status", nil,
		requirePriv("/storage/{storage}", "Datastore.Audit", "Datastore.AllocateSpace"), hStorageStatus)

	taskParams := map[string]pspec{
		"start": {typ: "integer", opt: true, min: intp(0)}, "limit": {typ: "integer", opt: true, min: intp(0)},
		"userfilter": specStrOpt, "typefilter": specStrOpt,
		"vmid":   {typ: "integer", opt: true, format: "pve-vmid", min: intp(100)},
		"errors": specBoolOpt,
		"source": {typ: "string", opt: true, enum: []string{"archive", "active", "all"}},
		"since":  {typ: "integer", opt: true}, "until": {typ: "integer", opt: true},
		"statusfilter": specStrOpt,
	}
	add("GET", "/nodes/{node}/tasks", taskParams, nil, hTaskList)
	add("GET", "/nodes/{node}/tasks/{upid}", nil, nil, func(*reqCtx) (any, *int, *apiError) {
		return []map[string]string{{"name": "log"}, {"name": "status"}}, nil, nil
	})
	add("DELETE", "/nodes/{node}/tasks/{upid}", nil, nil, hTaskStop)
	add("GET", "/nodes/{node}/tasks/{upid}/status", nil, nil, hTaskStatus)
	add("GET", "/nodes/{node}/tasks/{upid}/log", map[string]pspec{
		"start": {typ: "integer", opt: true, min: intp(0)}, "limit": {typ: "integer", opt: true, min: intp(0)},
		"download": specBoolOpt,
	}, nil, hTaskLog)

	for _, kind := range []string{"qemu", "lxc"} {
		base := "/nodes/{node}/" + kind
		audit := requirePriv("/vms/{vmid}", "VM.Audit")
		snap := requirePriv("/vms/{vmid}", "VM.Snapshot")
		listParams := map[string]pspec{}
		if kind == "qemu" {
			listParams["full"] = specBoolOpt
		}
		add("GET", base, listParams, nil, hGuestList(kind))
		add("GET", base+"/{vmid}", nil, nil, func(*reqCtx) (any, *int, *apiError) {
			out := []map[string]string{}
			for _, s := range []string{"config", "feature", "firewall", "rrd", "rrddata", "snapshot", "status"} {
				out = append(out, map[string]string{"subdir": s})
			}
			return out, nil, nil
		})
		add("GET", base+"/{vmid}/config", map[string]pspec{
			"current":  specBoolOpt,
			"snapshot": {typ: "string", opt: true, format: "pve-configid", maxLen: 40},
		}, audit, hConfig(kind))
		add("GET", base+"/{vmid}/status/current", nil, audit, hStatusCurrent(kind))
		for _, a := range []string{"start", "stop", "shutdown", "suspend", "resume"} {
			if kind == "lxc" && a == "suspend" {
				continue
			}
			add("POST", base+"/{vmid}/status/"+a, map[string]pspec{
				"timeout": {typ: "integer", opt: true, min: intp(0)}, "skiplock": specBoolOpt,
				"forceStop": specBoolOpt, "keepActive": specBoolOpt,
			}, requirePriv("/vms/{vmid}", "VM.PowerMgmt"), hPower(kind, a))
		}
		add("GET", base+"/{vmid}/snapshot", nil, audit, hSnapList(kind))
		createParams := map[string]pspec{"snapname": specSnapname, "description": specStrOpt}
		if kind == "qemu" {
			createParams["vmstate"] = specBoolOpt
		}
		add("POST", base+"/{vmid}/snapshot", createParams, snap, hSnapCreate(kind))
		add("GET", base+"/{vmid}/snapshot/{snapname}", nil, nil, hSnapIndex)
		add("DELETE", base+"/{vmid}/snapshot/{snapname}", map[string]pspec{"force": specBoolOpt}, snap, hSnapDelete(kind))
		add("GET", base+"/{vmid}/snapshot/{snapname}/config", nil,
			requirePriv("/vms/{vmid}", "VM.Snapshot", "VM.Snapshot.Rollback", "VM.Audit"), hSnapConfigGet(kind))
		add("PUT", base+"/{vmid}/snapshot/{snapname}/config", map[string]pspec{"description": specStrOpt}, snap, hSnapConfigPut(kind))
		add("POST", base+"/{vmid}/snapshot/{snapname}/rollback", map[string]pspec{"start": specBoolOpt},
			requirePriv("/vms/{vmid}", "VM.Snapshot", "VM.Snapshot.Rollback"), hSnapRollback(kind))
		add("GET", base+"/{vmid}/feature", map[string]pspec{
			"feature":  {typ: "string", enum: []string{"snapshot", "clone", "copy"}},
			"snapname": {typ: "string", opt: true, format: "pve-configid", maxLen: 40},
		}, audit, hFeature(kind))
	}
	add("POST", "/nodes/{node}/qemu/{vmid}/agent/ping", nil, agentPerm, hAgentPing)
}
