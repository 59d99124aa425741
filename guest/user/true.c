/* true - exit 0 (the fork+exec benchmark's child). */
int main(void) { return 0; }
