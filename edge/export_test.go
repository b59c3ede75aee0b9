package edge

// ConsumedByEngine is consumedByEngine, for the test that pins the mochi
// behaviour it relies on.
var ConsumedByEngine = consumedByEngine
