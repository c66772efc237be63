"""The `llmctl` command line: Click commands that parse, call the library and print."""
