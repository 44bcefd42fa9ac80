"""The line on one machine: the embedded broker, the stack of processes (`rhd demo`), and the hospital-side
publisher (`rhd publish`)."""
