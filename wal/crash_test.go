package wal_test

const crashChildEnv = "EDGEMQ_WAL_CRASH_CHILD"

func crashChild() {}
