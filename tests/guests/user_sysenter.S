/* Issue 11, item 1 (sysenter): #UD at the sysenter itself (+0), nothing after it runs (the guest of
   user_io_escape.S with another faulting instruction). */
#define FAULTING_INSN sysenter
#define FAULT_VECTOR 6
#include "user_io_escape.S"
