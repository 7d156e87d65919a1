/* main.c - the luatrain host: embeds LuaJIT and runs a recipe, -e code, or the REPL.
 *
 * It has no ML logic of its own. It finds lua/ next to the binary (build tree) or in
 * ../share/luatrain/lua (install tree), puts it on package.path, and hands over to Lua. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lt.h"

static int file_exists(const char *p) { return access(p, R_OK) == 0; }

/* Directory holding luatrain/init.lua, found relative to this executable. */
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
        char probe[PATH_MAX + 64];
        snprintf(out, len, candidates[i], exe);
        snprintf(probe, sizeof probe, "%s/luatrain/init.lua", out);
        if (file_exists(probe)) return 1;
    }
    return 0;
}

static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = "(error object is not a string)";
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static int report(lua_State *L, int status) {
    if (status != 0) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "luatrain: %s\n", msg ? msg : "(error object is not a string)");
        lua_pop(L, 1);
    }
    return status;
}

static int docall(lua_State *L, int nargs) {
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, 0, base);
    lua_remove(L, base);
    return status;
}

static void usage(void) {
    fprintf(stderr,
            "usage: luatrain [options] [recipe.lua [key=value ...]]\n"
            "  recipe.lua    run a recipe; key=value overrides its settings (--help lists them)\n"
            "  -e CODE       run CODE\n"
            "  -i            enter the REPL after running the recipe or code\n"
            "  -v            print the version\n"
            "  (no script)   start the REPL\n");
}

int main(int argc, char **argv) {
    char luadir[PATH_MAX];
    if (!find_lua_dir(luadir, sizeof luadir)) {
        fprintf(stderr, "luatrain: cannot find the Lua library (lua/luatrain/init.lua) next to "
                        "the binary or in ../" LT_INSTALL_LUA_DIR "\n");
        return 1;
    }
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "luatrain: cannot create a Lua state\n");
        return 1;
    }
    luaL_openlibs(L);

    /* package.path: our library first, then whatever was there. */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", luadir, luadir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);

    int interactive = 0, script = 0, status = 0, ran = 0;
    const char *code = NULL;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "-e") == 0) {
            if (i + 1 >= argc) {
                usage();
                lua_close(L);
                return 2;
            }
            code = argv[++i];
        } else if (strcmp(argv[i], "-i") == 0) {
            interactive = 1;
        } else if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--version") == 0) {
            printf("luatrain %s\n", lt_version());
            lua_close(L);
            return 0;
        } else if (strcmp(argv[i], "-h") == 0 && !script) {
            usage();
            lua_close(L);
            return 0;
        } else {
            script = i;
            break;
        }
    }

    /* arg table as the standalone interpreter makes it: arg[0] = script, arg[1..] = rest. */
    lua_createtable(L, argc, 1);
    for (int k = 0; k < argc; k++) {
        lua_pushstring(L, argv[k]);
        lua_rawseti(L, -2, k - (script ? script : argc));
    }
    lua_setglobal(L, "arg");

    if (code) {
        status = luaL_loadbuffer(L, code, strlen(code), "=(command line)");
        if (status == 0) status = docall(L, 0);
        report(L, status);
        ran = 1;
    }
    if (status == 0 && script) {
        status = luaL_loadfile(L, argv[script]);
        if (status == 0) {
            int nargs = argc - script - 1;
            for (int k = script + 1; k < argc; k++) lua_pushstring(L, argv[k]);
            status = docall(L, nargs);
        }
        report(L, status);
        ran = 1;
    }
    if (!ran || interactive) {
        lua_getglobal(L, "require");
        lua_pushstring(L, "luatrain.repl");
        status = docall(L, 1);
        if (status == 0) {
            lua_getglobal(L, "require");
            lua_pushstring(L, "luatrain.repl");
            lua_call(L, 1, 1);
            lua_getfield(L, -1, "run");
            lua_remove(L, -2);
            status = docall(L, 0);
        }
        report(L, status);
    }
    lua_close(L);
    return status == 0 ? 0 : 1;
}
