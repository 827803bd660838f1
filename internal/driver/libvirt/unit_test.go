package libvirt_test

// unitTests selects the tests of this package that need neither root nor libvirt: the
// merge planner and graph tests on a fake file system. make test-unit runs them with
// -run, and TestMain lets them run without root.
const unitTests = "^(TestPlan|TestGraph|TestHostUsers|TestDefinedChains)"
