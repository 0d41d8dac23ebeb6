/* commands.h - the subcommands of bin/perflow, one file each (cli/cmd_NAME.c).
 * Each returns the process exit status: 0 ok, 1 runtime error, 2 usage error. */
#ifndef PF_COMMANDS_H
#define PF_COMMANDS_H

int cmd_tokenize(int argc, char **argv);
int cmd_encode(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_refine(int argc, char **argv);
int cmd_cache(int argc, char **argv);
int cmd_put(int argc, char **argv);
int cmd_submit(int argc, char **argv);
int cmd_status(int argc, char **argv);

#endif
