/* main.c - the luatrain host: embeds LuaJIT and runs a recipe, -e code, or the REPL.
 *
 *     luatrain recipe.lua [key=value ...]   run a recipe (its settings read the key=value)
 *     luatrain plan recipe.lua [key=value ...]  print what the recipe's run will hold in memory
 *     luatrain export key=value ...             write and check GGUF / merged / adapter exports
 *     luatrain chat key=value ...               talk to a model in the terminal
 *     luatrain -e CODE                       run CODE
 *     luatrain -i recipe.lua                 run the recipe, then the REPL in its globals
 *     luatrain                               the REPL
 *
 * It has no ML logic of its own. It finds lua/ next to the binary (build tree) or in
 * ../share/luatrain/lua (install tree), puts it on package.path, builds the global `arg`
 * table, runs code under a traceback handler and hands the REPL over to
 * lua/luatrain/repl.lua. The only C it offers Lua is the "luatrain.host" module below:
 * libedit line editing, history, TAB completion, isatty, a monotonic clock and a
 * Ctrl-C-interruptible xpcall, the things Lua cannot do on its own.
 *
 * Errors and exit status:
 *   0  success (also --help of a recipe, which exits from Lua)
 *   N  exit(N) or os.exit(N) from Lua; at the end of REPL input, the status so far
 *   1  the recipe or code raised an error: "luatrain: <message>" and a traceback on stderr
 *   2  bad usage: an unknown option, a missing -e argument, a recipe file that cannot be
 *      opened, or a user error object that asks for it (see below)
 * An error value that is a string gets a traceback. An error value that is a table with a
 * __tostring metamethod is a user-facing error raised on purpose (a bad recipe setting,
 * luatrain.config): its message says everything, so it is printed alone, and its integer
 * field exit_status (1..125), when present, becomes the exit status. */
#define _DEFAULT_SOURCE /* on_exit */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>

#include "lt.h"
#include "lt_comm.h"

/* ---- finding the Lua library -------------------------------------------------------- */

static int file_exists(const char *p) { return access(p, R_OK) == 0; }

/* Directory holding luatrain/init.lua, found relative to this executable so that a build
 * tree and an install tree both work without environment variables. */
static int find_lua_dir(char *out, size_t len) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return 0;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return 0;
    *slash = '\0';
    const char *candidates[] = {"%s/lua", "%s/../" LT_INSTALL_LUA_DIR};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        char dir[PATH_MAX + 64], probe[PATH_MAX + 96];
        snprintf(dir, sizeof dir, candidates[i], exe);
        snprintf(probe, sizeof probe, "%s/luatrain/init.lua", dir);
        if (!file_exists(probe)) continue;
        /* Canonical, so tracebacks name the real files: in a build tree build/lua is a
         * symlink, and the sources are what one wants to open. */
        char real[PATH_MAX];
        const char *chosen = realpath(dir, real) ? real : dir;
        if (strlen(chosen) >= len) return 0;
        strcpy(out, chosen);
        return 1;
    }
    return 0;
}

/* ---- Ctrl-C ------------------------------------------------------------------------- */

/* While interruptible code runs, SIGINT turns into a Lua error at the next hook point, so
 * a long step in the REPL (or a recipe under -i) stops with a traceback and the session
 * keeps its state. Outside of that, SIGINT keeps its default action: a plain recipe run
 * dies as any Unix program does, with the status shells and mpirun expect. */
static lua_State *volatile interrupt_state;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted!");
}

static void on_sigint(int sig) {
    /* Compiled LuaJIT traces and long C calls never reach a hook point: a second Ctrl-C
     * must still be able to kill the process. */
    signal(sig, SIG_DFL);
    if (interrupt_state)
        lua_sethook(interrupt_state, interrupt_hook,
                    LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* What arming replaced, restored on disarming, so calls can nest and a SIGINT that the
 * parent set to be ignored (nohup, background jobs) stays ignored. */
struct interrupt_guard {
    struct sigaction old;
    lua_State *old_state;
    int armed;
};

static void interrupt_arm(lua_State *L, struct interrupt_guard *g) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    g->armed = sigaction(SIGINT, NULL, &g->old) == 0 && g->old.sa_handler != SIG_IGN;
    if (!g->armed) return;
    g->old_state = interrupt_state;
    interrupt_state = L;
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
}

static void interrupt_disarm(lua_State *L, struct interrupt_guard *g) {
    if (!g->armed) return;
    sigaction(SIGINT, &g->old, NULL);
    interrupt_state = g->old_state;
    /* A signal that came in as the call returned must not fire later, in REPL code; a
     * hook the user set (a profiler) is left alone. */
    if (lua_gethook(L) == interrupt_hook) lua_sethook(L, NULL, 0, 0);
}

/* ---- running code ------------------------------------------------------------------- */

/* Message handler: a string error gets a traceback; any other value (a user error object)
 * is passed through untouched for report() to print. */
static int msghandler(lua_State *L) {
    if (!lua_isstring(L, 1)) return 1;
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

static int docall(lua_State *L, int nargs, int nresults, int interruptible) {
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    struct interrupt_guard guard = {.armed = 0};
    if (interruptible) interrupt_arm(L, &guard);
    int status = lua_pcall(L, nargs, nresults, base);
    if (interruptible) interrupt_disarm(L, &guard);
    lua_remove(L, base);
    return status;
}

/* tostring(err) through __tostring, run protected: a failing __tostring must not take the
 * host down while it reports another error. */
static int error_tostring(lua_State *L) {
    if (!luaL_callmeta(L, 1, "__tostring") || !lua_isstring(L, -1)) lua_pushnil(L);
    return 1;
}

/* "luatrain: " alone, or "luatrain: rank R: " in a job of several ranks, whose error
 * output mpirun interleaves. */
static const char *error_prefix(const char *msg) {
    static char buf[48];
    lt_comm_info info;
    lt_comm *c = lt_comm_current();
    /* the comm layer's own messages start with the rank already */
    if (!c || lt_comm_get_info(c, &info) != LT_OK || strncmp(msg, "rank ", 5) == 0)
        return "luatrain: ";
    snprintf(buf, sizeof buf, "luatrain: rank %d: ", (int)info.rank);
    return buf;
}

/* Prints the error on top of the stack (if any) and returns the exit status it calls for. */
static int report(lua_State *L, int status) {
    if (status == 0) return 0;
    int code = status == LUA_ERRFILE ? 2 : 1;
    fflush(stdout);
    if (lua_isstring(L, -1)) {
        fprintf(stderr, "%s%s\n", error_prefix(lua_tostring(L, -1)), lua_tostring(L, -1));
        lua_pop(L, 1);
        return code;
    }
    lua_pushcfunction(L, error_tostring);
    lua_pushvalue(L, -2);
    if (lua_pcall(L, 1, 1, 0) == 0 && lua_isstring(L, -1)) {
        fprintf(stderr, "%s%s\n", error_prefix(lua_tostring(L, -1)), lua_tostring(L, -1));
        if (lua_istable(L, -2)) {
            lua_pushliteral(L, "exit_status");
            lua_rawget(L, -3);
            lua_Integer want = lua_isnumber(L, -1) ? lua_tointeger(L, -1) : 0;
            if (want >= 1 && want <= 125) code = (int)want;
            lua_pop(L, 1);
        }
    } else {
        fprintf(stderr, "%s(error object is a %s value)\n", error_prefix(""), luaL_typename(L, -2));
    }
    lua_pop(L, 2);
    return code;
}

/* A job of several ranks ends here, however the process exits (a return from main, or
 * os.exit from a recipe). A healthy one finalises MPI, so a recipe that did not call
 * lt.dist.shutdown() still ends cleanly. After an error it never does: a rank in
 * MPI_Finalize waits for peers that may be waiting in a collective for it, forever, so the
 * job is aborted instead, which has the launcher stop every rank at once. */
static void end_communication(int code, void *unused) {
    (void)unused;
    lt_comm *c = lt_comm_current();
    if (!c) return;
    fflush(stdout);
    if (code == 0 && lt_comm_shutdown(c) == LT_OK) return;
    char why[700];
    if (code == 0)
        snprintf(why, sizeof why, "could not finish communication: %s", lt_last_error());
    else
        snprintf(why, sizeof why, "this rank failed (exit status %d)%s%s", code,
                 lt_comm_failure(c) ? "; " : "", lt_comm_failure(c) ? lt_comm_failure(c) : "");
    lt_comm_abort(c, code ? code : 1, why);
}

/* ---- the luatrain.host module ------------------------------------------------------- */

/* libedit calls the completion callback with no user pointer; these carry the state that
 * is inside host.readline() and the registry slot of the Lua completer. */
static lua_State *completion_state;
static int completer_ref = LUA_NOREF;

/* libedit's TAB callback: asks the Lua completer (text, line up to the cursor) for a list
 * of words that replace text. Failures complete nothing rather than disturb the prompt. */
static char **complete_with_lua(const char *text, int start, int end) {
    (void)start;
    lua_State *L = completion_state;
    rl_attempted_completion_over = 1; /* never fall back to file names */
    if (!L || completer_ref == LUA_NOREF) return NULL;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, completer_ref);
    lua_pushstring(L, text);
    lua_pushlstring(L, rl_line_buffer, (size_t)(end > 0 ? end : 0));
    if (lua_pcall(L, 2, 1, 0) != 0 || !lua_istable(L, -1)) {
        lua_settop(L, top);
        return NULL;
    }
    size_t n = lua_objlen(L, -1);
    if (n == 0) {
        lua_settop(L, top);
        return NULL;
    }
    /* readline's layout: [0] the replacement (the common prefix), [1..n] the candidates. */
    char **matches = calloc(n + 2, sizeof *matches);
    if (!matches) {
        lua_settop(L, top);
        return NULL;
    }
    size_t count = 0, common = 0;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (int)i);
        const char *s = lua_tostring(L, -1);
        if (s) {
            char *copy = strdup(s);
            if (copy) {
                matches[1 + count] = copy;
                if (count == 0) {
                    common = strlen(copy);
                } else {
                    size_t k = 0;
                    while (k < common && copy[k] == matches[1][k]) k++;
                    common = k;
                }
                count++;
            }
        }
        lua_pop(L, 1);
    }
    lua_settop(L, top);
    if (count == 0) {
        free(matches);
        return NULL;
    }
    if (count == 1) {
        matches[0] = matches[1];
        matches[1] = NULL;
    } else {
        matches[0] = strndup(matches[1], common);
    }
    return matches;
}

static volatile sig_atomic_t prompt_interrupted;

static void on_prompt_sigint(int sig) {
    (void)sig;
    prompt_interrupted = 1;
}

/* host.readline(prompt) -> line, or nil at end of input, or false after Ctrl-C (the line
 * is dropped and the session goes on, as in a shell). */
static int host_readline(lua_State *L) {
    const char *prompt = luaL_optstring(L, 1, "");
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_prompt_sigint; /* no SA_RESTART: the read must return */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    prompt_interrupted = 0;
    completion_state = L;
    char *line = readline(prompt);
    completion_state = NULL;
    sigaction(SIGINT, &old, NULL);
    if (prompt_interrupted) {
        free(line);
        lua_pushboolean(L, 0);
        return 1;
    }
    if (!line) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, line);
    free(line);
    return 1;
}

static int host_add_history(lua_State *L) {
    const char *line = luaL_checkstring(L, 1);
    if (*line) add_history(line);
    return 0;
}

/* host.read_history(path [, max_entries]) -> boolean; a missing file is normal. */
static int host_read_history(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int limit = (int)luaL_optinteger(L, 2, 1000);
    using_history();
    stifle_history(limit);
    lua_pushboolean(L, read_history(path) == 0);
    return 1;
}

static int host_write_history(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    lua_pushboolean(L, write_history(path) == 0);
    return 1;
}

/* host.set_completer(fn(text, line) -> {words}) ; nil removes it. */
static int host_set_completer(lua_State *L) {
    if (completer_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, completer_ref);
        completer_ref = LUA_NOREF;
    }
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TFUNCTION);
        lua_pushvalue(L, 1);
        completer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        /* A Lua word is [%w_.:]; every other printable character ends one, so "lt.ze",
         * "t:sh" and "print(lt.ze" all hand the completer the whole dotted path. */
        rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{}()[],+-*/%^~#!?";
        rl_completer_word_break_characters = (char *)rl_basic_word_break_characters;
        rl_attempted_completion_function = complete_with_lua;
        rl_completion_append_character = '\0';
    } else {
        rl_attempted_completion_function = NULL;
    }
    return 0;
}

/* host.isatty([fd = 0]) -> boolean */
static int host_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 0)));
    return 1;
}

/* host.now() -> seconds on a monotonic clock (os.clock is CPU time, not wall time). */
static int host_now(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
    return 1;
}

/* host.xpcall(f, handler) -> as xpcall, but Ctrl-C while f runs raises "interrupted!"
 * inside f instead of killing the process. Arming and disarming happen here in C, where
 * no hook can fire between the call returning and the signal being reset. */
static int host_xpcall(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_insert(L, 1); /* handler, f */
    struct interrupt_guard guard;
    interrupt_arm(L, &guard);
    int status = lua_pcall(L, 0, LUA_MULTRET, 1);
    interrupt_disarm(L, &guard);
    lua_pushboolean(L, status == 0);
    lua_replace(L, 1);
    return lua_gettop(L);
}

static int luaopen_luatrain_host(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"readline", host_readline},
        {"add_history", host_add_history},
        {"read_history", host_read_history},
        {"write_history", host_write_history},
        {"set_completer", host_set_completer},
        {"isatty", host_isatty},
        {"now", host_now},
        {"xpcall", host_xpcall},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    rl_readline_name = "luatrain"; /* lets ~/.editrc address this program */
    return 1;
}

/* ---- command line ------------------------------------------------------------------- */

static void usage(FILE *to) {
    fprintf(to,
            "usage: luatrain [options] [recipe.lua [key=value ...]]\n"
            "  recipe.lua    run a recipe; key=value overrides its settings (recipe.lua --help\n"
            "                lists them); '-' reads the recipe from stdin\n"
            "  plan recipe.lua [key=value ...]\n"
            "                print what the recipe's run will hold in memory, without training\n"
            "                (--json: one JSON object)\n"
            "  export [key=value ...]\n"
            "                write a trained adapter as GGUF, a merged folder or a PEFT/llama.cpp\n"
            "                adapter, checked against the trained model (export --help)\n"
            "  chat [key=value ...]\n"
            "                talk to a model and its adapters in the terminal (chat --help)\n"
            "  --recipes     list the bundled recipes (run one by its name: luatrain qlora_llama)\n"
            "  -e CODE       run CODE (before the recipe; may be repeated)\n"
            "  -i            enter the REPL after running the recipe or code\n"
            "  -v            print the version\n"
            "  -h, --help    print this help\n"
            "  --            end of options\n"
            "  (no recipe)   start the REPL\n");
}

/* The words the host maps to bundled scripts (lua/luatrain/cmd/WORD.lua). */
static int bundled_command(const char *word) {
    static const char *const words[] = {"plan", "export", "chat"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcmp(word, words[i]) == 0) return 1;
    return 0;
}

struct options {
    int list_recipes; /* --recipes */
    int interactive;
    int script;   /* argv index of the recipe, 0 when there is none */
    int has_code; /* at least one -e */
};

/* Returns -1 when the host must exit with the status in *exit_status. */
static int parse_options(int argc, char **argv, struct options *o, int *exit_status) {
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            if (i + 1 < argc) o->script = i + 1;
            return 0;
        }
        if (a[0] != '-' || a[1] == '\0') { /* a file name, or "-" for stdin */
            o->script = i;
            return 0;
        }
        if (strcmp(a, "-e") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "luatrain: '-e' needs an argument\n");
                usage(stderr);
                *exit_status = 2;
                return -1;
            }
            o->has_code = 1;
            i++;
        } else if (strcmp(a, "-i") == 0) {
            o->interactive = 1;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
            printf("luatrain %s (%s)\n", lt_version(), LUAJIT_VERSION);
            *exit_status = 0;
            return -1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            *exit_status = 0;
            return -1;
        } else if (strcmp(a, "--recipes") == 0) {
            o->list_recipes = 1;
            return 0;
        } else {
            fprintf(stderr, "luatrain: unknown option '%s'\n", a);
            usage(stderr);
            *exit_status = 2;
            return -1;
        }
    }
    return 0;
}

/* The global arg, as the standalone interpreter makes it: arg[0] = the recipe,
 * arg[1..] = its arguments, the program and options at negative indices. Without a
 * recipe everything is at negative indices, so #arg == 0 and a config declared from the
 * REPL or -e sees no overrides. */
static void set_arg_table(lua_State *L, int argc, char **argv, int script) {
    int zero = script ? script : argc;
    lua_createtable(L, argc - zero, zero + 1);
    for (int k = 0; k < argc; k++) {
        lua_pushstring(L, argv[k]);
        lua_rawseti(L, -2, k - zero);
    }
    lua_setglobal(L, "arg");
}

/* status: what loading the chunk gave; on success the chunk and its nargs arguments are on
 * the stack, on failure the load error message is. */
static int run_loaded(lua_State *L, int status, int nargs, int interactive) {
    if (status != 0) return status;
    return docall(L, nargs, 0, interactive);
}

/* Loads lua/luatrain/repl.lua and runs it. Its run() returns the code given to exit(), or
 * nothing at end of input, which keeps the status so far: `luatrain -i bad.lua </dev/null`
 * still reports the recipe's failure. */
static int run_repl(lua_State *L, int code) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luatrain.repl");
    int status = docall(L, 1, 1, 0);
    if (status != 0) return report(L, status);
    lua_getfield(L, -1, "run");
    lua_remove(L, -2);
    status = docall(L, 0, 1, 0);
    if (status != 0) return report(L, status);
    if (lua_isnumber(L, -1)) code = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return code;
}

/* ---- OpenMP's waiting ---------------------------------------------------------------- */

/* libgomp's threads spin for 300000 rounds at every barrier before they sleep. When another
 * process wants the same CPUs (a second job, mpirun ranks bound to shared cores) the spinning
 * takes the CPU from the thread everyone waits for: the QLoRA recipe ran 10x slower than on
 * one thread. Passive waiting costs little when the CPUs are free (tools/bench/results/
 * oversubscription.txt). libgomp reads OMP_WAIT_POLICY once, when it is loaded, before
 * main: so unless the user chose a policy, the host sets it and runs itself again, marked
 * so that the second run takes the variables out of the environment children inherit. */
static void openmp_wait_passively(char **argv) {
    if (getenv("LT_OMP_PASSIVE_SET")) {
        unsetenv("LT_OMP_PASSIVE_SET");
        unsetenv("OMP_WAIT_POLICY");
        return;
    }
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) || setenv("LT_OMP_PASSIVE_SET", "1", 1)) return;
    execv("/proc/self/exe", argv);
    unsetenv("LT_OMP_PASSIVE_SET"); /* no /proc: run on as we are */
    unsetenv("OMP_WAIT_POLICY");
}

int main(int argc, char **argv) {
    openmp_wait_passively(argv);
    on_exit(end_communication, NULL);
    struct options opt;
    int code = 0;
    if (parse_options(argc, argv, &opt, &code) < 0) return code;

    char luadir[PATH_MAX];
    if (!find_lua_dir(luadir, sizeof luadir)) {
        fprintf(stderr, "luatrain: cannot find the Lua library (lua/luatrain/init.lua) next to "
                        "the binary or in ../" LT_INSTALL_LUA_DIR "\n");
        return 1;
    }
    /* Training logs are read through tee, mpirun and CI pipes: flush each line as it is
     * printed rather than in 4 KiB blocks. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "luatrain: cannot create a Lua state\n");
        return 1;
    }
    luaL_openlibs(L);

    /* package.path: our library first, then whatever LUA_PATH or the default gave. */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", luadir, luadir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_luatrain_host);
    lua_setfield(L, -2, "luatrain.host");
    lua_pop(L, 2);

    set_arg_table(L, argc, argv, opt.script);

    if (opt.list_recipes) {
        static const char list[] =
            "local r = require('luatrain.recipes') for _, e in ipairs(r.list()) do "
            "io.write(('%-18s %s\\n    %s\\n'):format(e.name, e.summary, e.path)) end";
        int st = luaL_loadbuffer(L, list, sizeof list - 1, "=(--recipes)");
        code = report(L, run_loaded(L, st, 0, 0));
        lua_close(L);
        return code;
    }
    /* -e chunks run first, in order, as in the standalone interpreter; they find the
     * library as lt, as the REPL does (when it loads). */
    int status = 0;
    if (opt.has_code) {
        /* A failed load leaves no half-loaded module marks behind (require's sentinels),
         * so the code's own require reports why rather than "loop or previous error". */
        static const char pre[] =
            "local ok, m = pcall(require, 'luatrain') if ok then lt = m else "
            "for k, v in pairs(package.loaded) do local t = type(v) "
            "if t == 'userdata' or t == 'number' then package.loaded[k] = nil end end end";
        if (luaL_loadbuffer(L, pre, sizeof pre - 1, "=(lt)") == 0) lua_pcall(L, 0, 0, 0);
        else lua_pop(L, 1);
    }
    int last = opt.script ? opt.script : argc;
    for (int i = 1; i < last && status == 0; i++) {
        if (strcmp(argv[i], "-e") != 0) continue;
        const char *chunk = argv[++i];
        status = run_loaded(L, luaL_loadbuffer(L, chunk, strlen(chunk), "=(command line)"),
                                  0, opt.interactive);
        code = report(L, status);
    }
    if (status == 0 && opt.script) {
        const char *path = strcmp(argv[opt.script], "-") == 0 ? NULL : argv[opt.script];
        /* A command word (luatrain plan RECIPE ...) names a script bundled with the library,
         * unless a file of that name is in the way. */
        char command[PATH_MAX + 32];
        if (path && bundled_command(path) && access(path, F_OK) != 0) {
            snprintf(command, sizeof command, "%s/luatrain/cmd/%s.lua", luadir, path);
            path = command;
        } else if (path && !strchr(path, '/') && access(path, F_OK) != 0) {
            /* a bundled recipe by its name (qlora_llama or qlora_llama.lua), from anywhere */
            const char *ext = strlen(path) > 4 && strcmp(path + strlen(path) - 4, ".lua") == 0 ? "" : ".lua";
            snprintf(command, sizeof command, "%s/../recipes/%s%s", luadir, path, ext);
            if (access(command, F_OK) == 0) path = command;
        }
        int loaded = luaL_loadfile(L, path);
        int nargs = 0;
        if (loaded == 0) {
            nargs = argc - opt.script - 1;
            if (!lua_checkstack(L, nargs + LUA_MINSTACK)) {
                lua_pop(L, 1);
                lua_pushliteral(L, "too many recipe arguments");
                loaded = LUA_ERRRUN;
                nargs = 0;
            }
            for (int k = opt.script + 1; k < argc && loaded == 0; k++) lua_pushstring(L, argv[k]);
        }
        status = run_loaded(L, loaded, nargs, opt.interactive);
        code = report(L, status);
    }
    /* Like python -i, a failed recipe still leads into the REPL: its state is what one
     * wants to look at. */
    if (opt.interactive || (!opt.script && !opt.has_code)) code = run_repl(L, code);

    lua_close(L);
    return code;
}
