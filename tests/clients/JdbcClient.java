// pgJDBC through the gateway, for tests/test_jdbc_e2e.py: one scenario per run, each
// printing what the driver saw as tab-separated lines. An SQLException a scenario expects
// is printed ("error", SQLSTATE, message); any other makes the run exit non-zero.
//
//   java -cp postgresql.jar:DIR JdbcClient URL TOKEN SCENARIO [ROOT_CERT]
//
// With ROOT_CERT the gateway's certificate is verified (verify-full), else only
// encrypted (require).

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.CallableStatement;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Statement;
import java.sql.Types;
import java.util.Arrays;
import java.util.Properties;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public final class JdbcClient {
    private JdbcClient() {}

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", "ci-bot");
        props.setProperty("password", args[1]);  // the JWT
        if (args.length > 3) {
            props.setProperty("sslmode", "verify-full");
            props.setProperty("sslrootcert", args[3]);
        } else {
            props.setProperty("sslmode", "require");
        }
        Connection connected;
        try {
            connected = DriverManager.getConnection(args[0], props);
        } catch (SQLException e) {  // refused at login: what the driver shows its caller
            error(e);
            return;
        }
        try (Connection c = connected) {
            switch (args[2]) {
                case "masked" -> masked(c);
                case "valid" -> valid(c);
                case "prepared" -> prepared(c);
                case "fetch" -> fetch(c);
                case "batch" -> batch(c);
                case "refused" -> refused(c);
                case "cancel" -> cancel(c);
                case "metadata" -> metadata(c);
                case "callable" -> callable(c);
                case "parameters" -> parameters(c);
                case "copy" -> copy(c);
                case "keys" -> keys(c);
                case "notify" -> notifyScenario(c);
                case "held" -> held(c);
                case "role" -> role(c);
                case "limited" -> limited(c);
                case "typed" -> typed(c);
                case "autosave" -> autosave(c);
                default -> throw new IllegalArgumentException("no scenario " + args[2]);
            }
        }
    }

    private static void out(Object... fields) {
        StringBuilder line = new StringBuilder();
        for (Object f : fields) {
            if (line.length() > 0) {
                line.append('\t');
            }
            line.append(f);
        }
        System.out.println(line);
    }

    /** The first column of the first row of `sql`, as text. */
    private static String value(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            r.next();
            return r.getString(1);
        }
    }

    private static void error(SQLException e) {
        out("error", e.getSQLState(), e.getMessage().replace('\n', ' '));
    }

    /** A plain Statement: JDBC still speaks the extended protocol, unnamed. */
    private static void masked(Connection c) throws SQLException {
        try (Statement s = c.createStatement();
             ResultSet r = s.executeQuery("select id, holder, pan from cards order by id")) {
            while (r.next()) {
                out("row", r.getInt(1), r.getString(2), r.getString(3));
            }
        }
    }

    /** Connection pools check a connection with isValid(), which runs an empty query. */
    private static void valid(Connection c) throws SQLException {
        for (int i = 0; i < 2; i++) {
            out("valid", c.isValid(5));
        }
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("select 1")) {
            r.next();
            out("after", r.getInt(1));
        }
    }

    /** Past prepareThreshold (5 runs) the driver switches to a named server statement
     *  and binary results: the masks must follow it there. */
    private static void prepared(Connection c) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(
                "select id, pan, holder from cards where id = ?")) {
            for (int i = 1; i <= 8; i++) {
                ps.setInt(1, (i - 1) % 5 + 1);
                try (ResultSet r = ps.executeQuery()) {
                    r.next();
                    out("row", r.getInt(1), r.getString(2),
                        ps.unwrap(PGStatement.class).isUseServerPrepare());
                }
            }
        }
    }

    /** A fetch size with autocommit off: a portal read two rows per Execute. */
    private static void fetch(Connection c) throws SQLException {
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement("select id, pan from cards order by id")) {
            ps.setFetchSize(2);
            try (ResultSet r = ps.executeQuery()) {
                while (r.next()) {
                    out("row", r.getInt(1), r.getString(2));
                }
            }
        }
        c.commit();
    }

    /** executeBatch sends every Bind/Execute of the batch before one Sync. */
    private static void batch(Connection c) throws SQLException {
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement(
                "insert into transactions (card_id, amount) values (?, ?)")) {
            for (int i = 1; i <= 3; i++) {
                ps.setInt(1, i);
                ps.setBigDecimal(2, new BigDecimal("0.0" + i));
                ps.addBatch();
            }
            out("counts", Arrays.toString(ps.executeBatch()));
        }
        String small = "select count(*) from transactions where amount < 0.05";
        out("inside", value(c, small));
        c.rollback();
        out("after_rollback", value(c, small));
        c.commit();
    }

    /** A statement the gateway refuses: a masked column inside an expression. The
     *  session stays usable, and a transaction the refusal aborted rolls back. */
    private static void refused(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            try {
                s.executeQuery("select pan || '' from cards");
                out("not_refused");
            } catch (SQLException e) {
                error(e);
            }
            out("after", value(c, "select 41 + 1"));
            c.setAutoCommit(false);
            try {
                s.executeQuery("select upper(pan) from cards");
                out("not_refused");
            } catch (SQLException e) {
                error(e);
            }
            try {
                s.executeQuery("select 1");
                out("not_aborted");
            } catch (SQLException e) {
                error(e);
            }
            c.rollback();
            out("after_rollback", value(c, "select 43"));
            c.commit();
        }
    }

    /** setQueryTimeout cancels through a CancelRequest on a new connection. */
    private static void cancel(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.setQueryTimeout(1);
            long t0 = System.nanoTime();
            try {
                s.execute("select pg_sleep(30)");
                out("not_cancelled");
            } catch (SQLException e) {
                error(e);
            }
            out("seconds", (System.nanoTime() - t0) / 1_000_000_000.0);
            s.setQueryTimeout(0);
            out("after", value(c, "select 7"));
        }
    }

    /** DatabaseMetaData: the driver's own catalog queries. */
    private static void metadata(Connection c) throws SQLException {
        DatabaseMetaData md = c.getMetaData();
        try (ResultSet r = md.getColumns(null, "public", "cards", null)) {
            while (r.next()) {
                out("column", r.getString("COLUMN_NAME"), r.getString("TYPE_NAME"));
            }
        }
        try (ResultSet r = md.getPrimaryKeys(null, "public", "cards")) {
            while (r.next()) {
                out("key", r.getString("COLUMN_NAME"));
            }
        }
    }

    /** The {call} escape, with an OUT parameter. */
    private static void callable(Connection c) throws SQLException {
        try (CallableStatement cs = c.prepareCall("{? = call upper(?)}")) {
            cs.registerOutParameter(1, Types.VARCHAR);
            cs.setString(2, "abc");
            cs.execute();
            out("value", cs.getString(1));
        }
    }

    /** CopyManager, as ETL code uses it: COPY out (masked) and in (rolled back). */
    private static void copy(Connection c) throws Exception {
        CopyManager copier = c.unwrap(PGConnection.class).getCopyAPI();
        StringWriter out = new StringWriter();
        long n = copier.copyOut(
            "COPY (select id, pan from cards order by id) TO STDOUT WITH (FORMAT csv)", out);
        out("copied_out", n);
        for (String line : out.toString().split("\n")) {
            out("line", line);
        }
        c.setAutoCommit(false);
        out("copied_in", copier.copyIn(
            "COPY transactions (card_id, amount) FROM STDIN WITH (FORMAT csv)",
            new StringReader("1,0.01\n2,0.02\n")));
        c.rollback();
    }

    /** RETURN_GENERATED_KEYS: the driver appends RETURNING * to the INSERT. */
    private static void keys(Connection c) throws SQLException {
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement(
                "insert into cards (holder, pan, cvv, expiry) values (?, ?, ?, ?)",
                Statement.RETURN_GENERATED_KEYS)) {
            ps.setString(1, "Zed Park");
            ps.setString(2, "4242424242424242");
            ps.setString(3, "000");
            ps.setString(4, "01/30");
            out("inserted", ps.executeUpdate());
            try (ResultSet r = ps.getGeneratedKeys()) {
                while (r.next()) {
                    out("key", r.getString("holder"), r.getString("pan"));
                }
            }
        }
        c.rollback();
    }

    /** LISTEN/NOTIFY: a payload carrying a card number reaches the client masked. */
    private static void notifyScenario(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute("LISTEN jobs");
            s.execute("NOTIFY jobs, 'card 5555555555554444 done'");
        }
        PGNotification[] got = c.unwrap(PGConnection.class).getNotifications(5000);
        for (PGNotification n : got == null ? new PGNotification[0] : got) {
            out("notification", n.getName(), n.getParameter());
        }
    }

    /** A statement the policy holds for a human's approval: the driver waits on its
     *  answer; the gateway's notice with the request id arrives as a warning. */
    private static void held(Connection c) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("select secret from vault where id = ?")) {
            ps.setInt(1, 1);
            try (ResultSet r = ps.executeQuery()) {
                for (SQLWarning w = ps.getWarnings(); w != null; w = w.getNextWarning()) {
                    out("warning", w.getMessage().replace('\n', ' '));
                }
                while (r.next()) {
                    out("row", r.getString(1));
                }
            }
        } catch (SQLException e) {
            error(e);
        }
        out("after", value(c, "select 6"));
    }

    /** A policy's db_role: a prepared statement run past prepareThreshold (then a named
     *  server statement) and a fetch-size portal run as the role; nothing else does. */
    private static void role(Connection c) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(
                "select current_user, total from reports where id = ?")) {
            for (int i = 1; i <= 7; i++) {
                ps.setInt(1, 1);
                try (ResultSet r = ps.executeQuery()) {
                    r.next();
                    out("run", r.getString(1), r.getString(2));
                }
                out("between", value(c, "select current_user"));
            }
        }
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement(
                "select current_user, g from reports, generate_series(1, 5) g order by g")) {
            ps.setFetchSize(2);
            try (ResultSet r = ps.executeQuery()) {
                while (r.next()) {
                    out("piece", r.getString(1), r.getInt(2));
                }
            }
        }
        c.commit();
        out("after", value(c, "select current_user"));
    }

    /** A policy's row_limit: a plain read, a prepared one past prepareThreshold, and a
     *  fetch-size portal each get at most the limit, with the gateway's warning. */
    private static void limited(Connection c) throws SQLException {
        try (Statement s = c.createStatement();
             ResultSet r = s.executeQuery("select id from limited order by id")) {
            int n = 0;
            while (r.next()) {
                n++;
            }
            out("plain", n, s.getWarnings() == null ? "-" : s.getWarnings().getMessage());
        }
        try (PreparedStatement ps = c.prepareStatement(
                "select id from limited where id > ? order by id")) {
            for (int i = 1; i <= 6; i++) {
                ps.setInt(1, i);
                int n = 0;
                try (ResultSet r = ps.executeQuery()) {
                    while (r.next()) {
                        n++;
                    }
                }
                out("prepared", i, n);
            }
        }
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement("select id from limited order by id")) {
            ps.setFetchSize(2);
            int n = 0;
            try (ResultSet r = ps.executeQuery()) {
                while (r.next()) {
                    n++;
                }
            }
            out("fetched", n);
        }
        c.commit();
        out("after", value(c, "select count(*) from limited"));
    }

    /** Masked columns of other types than text (declared text by the gateway), read as
     *  text and, past prepareThreshold, with the driver's binary transfer. */
    private static void typed(Connection c) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(
                "select id, first6 from mask_numeric where id = ?")) {
            for (int i = 1; i <= 7; i++) {
                ps.setInt(1, 1);
                try (ResultSet r = ps.executeQuery()) {
                    r.next();
                    out("numeric", r.getInt(1), r.getString(2),
                        r.getMetaData().getColumnTypeName(2));
                }
            }
        }
    }

    /** autosave=always (a URL option): the driver wraps each statement of a transaction
     *  in a savepoint, so a refusal rolls back to it and the transaction goes on. */
    private static void autosave(Connection c) throws SQLException {
        c.setAutoCommit(false);
        out("before", value(c, "select count(*) from cards"));
        try (Statement s = c.createStatement()) {
            s.executeQuery("select pan || '' from cards");
            out("not_refused");
        } catch (SQLException e) {
            error(e);
        }
        out("after", value(c, "select pan from cards where id = 1"));
        c.commit();
    }

    /** A PAN sent as a parameter finds its row; only the masked value comes back. */
    private static void parameters(Connection c) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(
                "select holder, pan from cards where pan = ?")) {
            ps.setString(1, "4111111111111111");
            try (ResultSet r = ps.executeQuery()) {
                while (r.next()) {
                    out("row", r.getString(1), r.getString(2));
                }
            }
        }
        try (Statement s = c.createStatement();
             ResultSet r = s.executeQuery("select 'card 5555555555554444 on file'")) {
            r.next();
            out("text", r.getString(1));
        }
    }
}
