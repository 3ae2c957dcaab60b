"""AdaptQNet: hardware-aware mixed-precision quantization search for microcontrollers."""
