#define NO_TR 1
#include "callgate_escape.S"
