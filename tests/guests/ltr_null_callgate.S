/* A ring-0 kernel (bare, hwassist) loads TR with a NULL selector - real CPUs raise #GP, Unicorn
   empties TR - and a user program then calls through an inner-privilege call gate: Unicorn's
   get_ss_esp_from_tss calls cpu_abort ("invalid tss") and the VM process dies with SIGABRT.  Not
   preventable from outside the engine (both steps run natively at ring 0 / ring 3, no exit between
   them): the parent must report it as engine_crash, cleanly.  On ring-1 personalities the `ltr`
   traps and is refused (#GP) and the run ends in a triple fault.  docs/security.md, "Known gaps". */
#define NULL_TR 1
#include "callgate_user_no_tr.S"
